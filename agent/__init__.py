"""relay-agent: a durable outbound mail agent and drop-in sendmail."""

__version__ = "0.1.0"
