"""edgekit fleet simulator: generates a fleet's MQTT traffic with its ground truth, and publishes it."""

__version__ = "0.1.0"
