"""The ingest's Prometheus metrics, in their own registry (prefix `parkgate_ingest_`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from gateway import __version__
from gateway.metrics import LATENCY_BUCKETS

P = "parkgate_ingest_"


class IngestMetrics:
    """Every metric of one ingest process. `registry` and `loop_lag` are what
    gateway/health.py's HttpServer and Heartbeat read."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        Info("parkgate_build", "parkgate version", registry=r).info({"version": __version__})
        self.rows = Counter(f"{P}rows", "Readings inserted (new rows)", registry=r)
        self.duplicates = Counter(f"{P}duplicates", "Readings dropped as already stored",
                                  registry=r)
        self.messages = Counter(f"{P}messages", "MQTT messages committed and acknowledged",
                                ["kind"], registry=r)
        self.rejected = Counter(f"{P}rejected", "Messages or readings kept in the rejected "
                                "table instead of the readings table", ["reason"], registry=r)
        self.commit_seconds = Histogram(f"{P}commit_seconds", "Time one batch's transaction "
                                        "took", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram(f"{P}batch_readings", "Readings per committed batch",
                                    buckets=(1, 10, 100, 500, 1000, 5000, 20000, 100000),
                                    registry=r)
        self.lag = Gauge(f"{P}lag_seconds", "Commit time minus the measurement time of the "
                         "newest reading of the last batch", registry=r)
        self.unacked = Gauge(f"{P}unacked_messages", "Messages received, not yet committed",
                             registry=r)
        self.last_seq = Gauge(f"{P}last_seq", "Highest seq stored per gateway", ["gateway"],
                              registry=r)
        self.missing = Gauge(f"{P}missing_readings", "Readings in gaps older than gaps.after"
                             " that the agent did not announce as dropped", ["gateway"],
                             registry=r)
        self.dropped = Gauge(f"{P}dropped_readings", "Readings the agent announced as "
                             "dropped by its buffer policy and that never arrived",
                             ["gateway"], registry=r)
        self.online = Gauge(f"{P}gateway_online", "Last status message: 1 online, 0 offline",
                            ["gateway"], registry=r)
        self.broker_connected = Gauge(f"{P}broker_connected", "1 while subscribed",
                                      ["broker"], registry=r)
        self.db_connected = Gauge(f"{P}db_connected", "1 while PostgreSQL is connected",
                                  registry=r)
        self.db_errors = Counter(f"{P}db_errors", "Failed transactions (retried)", ["kind"],
                                 registry=r)
        self.gap_checks = Counter(f"{P}gap_checks", "Completed gap checks", registry=r)
        self.loop_lag = Gauge("parkgate_ingest_event_loop_lag_seconds",
                              "How late the event loop ran its heartbeat", registry=r)
