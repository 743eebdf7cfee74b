"""Prometheus metrics, served at ``/metrics``: what an operator graphs and alerts on.

One registry per service instance (not the process-global one), so several apps in one
process, and tests, never collide.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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
        self.undelivered = Gauge(
            "csbot_undelivered_conversations",
            "Conversations with a reply that never arrived (failed, dead or quota_exceeded, none delivered "
            "after it): customers who think they were ignored", ["app"], registry=self.registry)
        self.webhooks = Counter(
            "csbot_webhook_deliveries_total", "Outbound webhook delivery attempts, by outcome",
            ["webhook", "outcome"], registry=self.registry)
        self.cloud_db = Counter(
            "csbot_cloud_db_operations_total",
            "Cloud database operations, by app, collection, operation and outcome "
            "(ok, invalid, denied, not_found, too_large, error)",
            ["app", "collection", "operation", "outcome"], registry=self.registry)
        #: read from the store just before each scrape (gauges of what the store holds)
        self.refreshers: list[Callable[[], Awaitable[None]]] = []

    async def refresh(self) -> None:
        for refresh in self.refreshers:
            try:
                await refresh()
            except Exception as exc:  # a scrape still answers with what it has
                logging.getLogger("csbot.metrics").warning("could not refresh a metric: %r", exc)

    def render(self) -> bytes:
        return generate_latest(self.registry)
