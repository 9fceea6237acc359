"""The boilermaker command line."""
