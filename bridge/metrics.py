"""Prometheus metrics, all named jobserv_bridge_*, in a registry of the app's own."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.store import DestinationStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ACCEPT_TO_SENT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 21600, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "jobserv_bridge_webhooks_received",
            "Webhooks received, by outcome (accepted, duplicate, 400, 401, 403, 408, 413, 503).",
            ["outcome"],
            registry=r,
        )
        self.refused = Counter(
            "jobserv_bridge_requests_refused",
            "Requests refused before any handler, by status: malformed or over the header"
            " limits (400, 431), an unknown Expect (417), past max_connections (503).",
            ["status"],
            registry=r,
        )
        self.deliveries = Counter(
            "jobserv_bridge_deliveries",
            "Delivery attempts by destination and outcome (sent, retry, dead), with the reason.",
            ["destination", "outcome", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "jobserv_bridge_retries",
            "Deliveries scheduled for another attempt.",
            ["destination"],
            registry=r,
        )
        self.truncations = Counter(
            "jobserv_bridge_truncations",
            "Messages cut to fit a chat's size limits.",
            ["destination"],
            registry=r,
        )
        self.pending = Gauge(
            "jobserv_bridge_pending_deliveries",
            "Deliveries waiting to be sent.",
            ["destination"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            "jobserv_bridge_oldest_pending_age_seconds",
            "Age of the oldest delivery waiting to be sent (0 when none).",
            ["destination"],
            registry=r,
        )
        self.dead = Gauge(
            "jobserv_bridge_dead_letters",
            "Deliveries that failed for good and wait for a replay.",
            ["destination"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "jobserv_bridge_send_duration_seconds",
            "Time a chat took to answer a send.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.accept_to_sent_seconds = Histogram(
            "jobserv_bridge_accept_to_sent_seconds",
            "Time from an event's acceptance to its message being sent.",
            ["destination"],
            buckets=_ACCEPT_TO_SENT_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "jobserv_bridge_config_reloads",
            "Config reloads (SIGHUP), by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.last_reload = Gauge(
            "jobserv_bridge_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (Unix time).",
            registry=r,
        )

    def refresh_backlog(
        self, destinations: Iterable[str], stats: Mapping[str, DestinationStats]
    ) -> None:
        """Set the backlog gauges from the store's stats: configured destinations without a
        row read 0, and destinations gone from the config keep being reported while rows are."""
        now = time.time()
        for name in set(destinations) | stats.keys():
            found = stats.get(name)
            oldest = found.oldest_pending_at if found else None
            self.pending.labels(name).set(found.pending if found else 0)
            self.dead.labels(name).set(found.dead if found else 0)
            self.oldest_pending.labels(name).set(now - oldest if oldest else 0)
