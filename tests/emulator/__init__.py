"""Contract tests of boilermaker-emulator against the real azure-servicebus SDK."""
