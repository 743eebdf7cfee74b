"""Prometheus metrics, served at ``/metrics``: what an operator graphs and alerts on.

One registry per service instance (not the process-global one), so several apps in one
process, and tests, never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pushes = Counter(
            "csbot_pushes_total", "Pushes received by the webhook, by outcome",
            ["app", "outcome"], registry=self.registry)
        self.ack_seconds = Histogram(
            "csbot_ack_seconds", "Time from a push's arrival to its answer (stored pushes)",
            ["app"], registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.handled = Counter(
            "csbot_handled_total", "Pushes handled by the workers, by status",
            ["app", "status"], registry=self.registry)
        self.sends = Counter(
            "csbot_outbox_total", "Outbox delivery attempts, by resulting state",
            ["app", "state"], registry=self.registry)
        self.function_seconds = Histogram(  # csbot.cloud
            "csbot_function_seconds", "Callable-function calls, by function and outcome",
            ["function", "outcome"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
