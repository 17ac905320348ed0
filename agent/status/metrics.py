"""/metrics through prometheus-client: the daemon's series, labelled by relay account.

The counters are fed as mail moves (see status/counters.py); the queue gauges from QueueFigures
the daemon refreshes on its disk thread, so a scrape reads numbers and never the queue.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from agent.status.figures import STATES, QueueFigures

OUTCOMES = ("queued", "sent", "deferred", "bounced", "held")
DELAY_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0)
CHECK_VALUE = {"PASS": 1.0, "WARN": 0.5, "FAIL": 0.0}


class Metrics:
    def __init__(self, accounts: tuple[str, ...] = ("default",)) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.messages = Counter(
            "relay_agent_messages", "Messages by outcome.", ["account", "outcome"], registry=r
        )
        self.replies = Counter(
            "relay_agent_relay_replies", "Relay replies by code.", ["account", "code"], registry=r
        )
        self.delay = Histogram(
            "relay_agent_delivery_delay_seconds",
            "From arrival to the relay's 250.",
            ["account"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.rate = Gauge("relay_agent_rate_effective", "The pace now, msg/s.", ["account"], registry=r)
        self.pushback = Counter(
            "relay_agent_pushback", "Push-back replies from the relay.", ["account"], registry=r
        )
        self.domain = Gauge(
            "relay_agent_domain_check",
            "Sender-domain checks: 1 PASS, 0.5 WARN, 0 FAIL.",
            ["domain", "check"],
            registry=r,
        )
        self.queue = Gauge(
            "relay_agent_queue_messages", "Messages in the queue by state.", ["state"], registry=r
        )
        self.oldest = Gauge(
            "relay_agent_queue_oldest_seconds", "Age of the oldest message not failed.", registry=r
        )
        self.show_queue(QueueFigures())
        for account in accounts:
            self.add_account(account)

    def add_account(self, account: str, rate: float | None = None) -> None:
        """Every series of an account exists from the start, at 0, so alerts see it."""
        for outcome in OUTCOMES:
            self.messages.labels(account, outcome)
        self.pushback.labels(account)
        if rate is not None:
            self.rate.labels(account).set(rate)

    def show_queue(self, figures: QueueFigures) -> None:
        for state in STATES:
            self.queue.labels(state).set(figures.counts.get(state, 0))
        self.oldest.set(figures.oldest)

    def domain_check(self, domain: str, check: str, verdict: str) -> None:
        if verdict in CHECK_VALUE:
            self.domain.labels(domain, check).set(CHECK_VALUE[verdict])
