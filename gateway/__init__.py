"""edgekit gateway: MQTT ingest, event-time processing and InfluxDB sinks for ESP32 fleets."""

__version__ = "0.1.0"
