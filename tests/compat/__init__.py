"""Compatibility with the published boilermaker-servicebus 1.4.1, run side by side with it."""
