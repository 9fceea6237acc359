"""Azure Service Bus transport for Boilermaker."""
