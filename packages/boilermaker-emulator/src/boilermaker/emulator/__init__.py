"""A local Azure Service Bus namespace over AMQP 1.0."""
