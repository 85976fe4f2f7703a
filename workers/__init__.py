"""The Kafka runtime: event handlers, projections and process managers in consumer groups, and the CLI."""

from workers.health import Check, HealthReport, check_health

__all__ = ["Check", "HealthReport", "check_health"]
