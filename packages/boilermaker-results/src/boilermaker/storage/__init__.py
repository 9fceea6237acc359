"""Azure Blob Storage results store for Boilermaker."""
