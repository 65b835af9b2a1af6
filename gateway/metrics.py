"""Prometheus metrics: one registry per agent, core metrics by name, driver metrics on demand."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from gateway import __version__

PREFIX = "parkgate_"
M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric of one agent, in its own registry (no process-global state).

    Drivers add theirs with `counter()`, `gauge()` and `histogram()`, which return the
    existing metric when a second device of the same driver asks for the same name.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._extra: dict[str, MetricWrapperBase] = {}
        r = self.registry
        self.build_info = Info(f"{PREFIX}build", "parkgate version", registry=r)
        self.build_info.info({"version": __version__})
        # devices
        self.readings = Counter(f"{PREFIX}readings", "Readings produced by a device",
                                ["device"], registry=r)
        self.poll_errors = Counter(f"{PREFIX}poll_errors", "Failed polls or connects",
                                   ["device", "kind"], registry=r)
        self.poll_duration = Histogram(f"{PREFIX}poll_duration_seconds", "Time one poll took",
                                       ["device"], buckets=LATENCY_BUCKETS, registry=r)
        self.poll_overruns = Counter(f"{PREFIX}poll_overruns",
                                     "Poll ticks skipped because the previous poll overran",
                                     ["device"], registry=r)
        self.device_up = Gauge(f"{PREFIX}device_up", "1 if the last poll of a device succeeded",
                               ["device"], registry=r)
        self.device_last_success = Gauge(f"{PREFIX}device_last_success_timestamp_seconds",
                                         "Unix time of the last successful poll",
                                         ["device"], registry=r)
        # buffer
        self.buffer_readings = Gauge(f"{PREFIX}buffer_readings",
                                     "Readings in the durable buffer not yet acknowledged",
                                     registry=r)
        self.buffer_bytes = Gauge(f"{PREFIX}buffer_bytes",
                                  "Payload bytes held in the durable buffer", registry=r)
        self.buffer_file_bytes = Gauge(f"{PREFIX}buffer_file_bytes",
                                       "Size of the buffer database file", registry=r)
        self.buffer_oldest_age = Gauge(f"{PREFIX}buffer_oldest_age_seconds",
                                       "Age of the oldest unacknowledged reading", registry=r)
        self.buffer_dropped = Counter(f"{PREFIX}buffer_dropped",
                                      "Readings dropped from the buffer", ["reason"], registry=r)
        self.buffer_commits = Counter(f"{PREFIX}buffer_commits", "SQLite commits", registry=r)
        self.buffer_commit_duration = Histogram(f"{PREFIX}buffer_commit_duration_seconds",
                                                "Time one buffer commit took",
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.buffer_write_errors = Counter(f"{PREFIX}buffer_write_errors",
                                           "Failed buffer writes (disk full, I/O error)",
                                           registry=r)
        self.buffer_corruptions = Counter(f"{PREFIX}buffer_corruptions",
                                          "Buffer files found corrupt and moved aside",
                                          registry=r)
        self.buffer_pending = Gauge(f"{PREFIX}buffer_pending_readings",
                                    "Readings in memory waiting for the next commit", registry=r)
        # uplink
        self.uplink_connected = Gauge(f"{PREFIX}uplink_connected",
                                      "1 while connected to a broker", registry=r)
        self.uplink_broker = Gauge(f"{PREFIX}uplink_broker_info",
                                   "1 for the broker currently in use", ["broker"], registry=r)
        self.uplink_published = Counter(f"{PREFIX}uplink_published_readings",
                                        "Readings acknowledged by the broker", registry=r)
        self.uplink_messages = Counter(f"{PREFIX}uplink_published_messages",
                                       "MQTT messages acknowledged by the broker", registry=r)
        self.uplink_reconnects = Counter(f"{PREFIX}uplink_reconnects",
                                         "Connection attempts after the first", registry=r)
        self.uplink_connect_errors = Counter(f"{PREFIX}uplink_connect_errors",
                                             "Failed connection attempts", ["reason"],
                                             registry=r)
        self.uplink_publish_refused = Counter(
            f"{PREFIX}uplink_publish_refused", "Publishes the broker refused in its PUBACK "
            "(MQTT 5 reason code); their readings stay buffered", ["reason"], registry=r)
        self.uplink_session_takeovers = Counter(
            f"{PREFIX}uplink_session_takeovers", "MQTT sessions another client with our client id "
            "took over: evidence reason_code (MQTT 5 DISCONNECT 0x8E) or quick_losses "
            "(suspected: repeated losses right after connecting)", ["evidence"], registry=r)
        self.uplink_latency = Histogram(f"{PREFIX}uplink_publish_latency_seconds",
                                        "Publish to PUBACK", buckets=LATENCY_BUCKETS, registry=r)
        self.uplink_drop_notices = Counter(
            f"{PREFIX}uplink_drop_notices",
            "Drop notices (seq ranges dropped on purpose) acknowledged by the broker", registry=r)
        self.uplink_inflight = Gauge(f"{PREFIX}uplink_inflight_messages",
                                     "Publishes waiting for PUBACK", registry=r)
        # commands (downlink)
        self.commands = Counter(f"{PREFIX}commands", "Command requests answered, by outcome "
                                "(device 'unknown' for requests naming no configured device)",
                                ["device", "action", "status"], registry=r)
        # agent
        self.config_reload_failures = Counter(f"{PREFIX}config_reload_failures",
                                              "SIGHUP reloads rejected as invalid", registry=r)
        self.config_reloads = Counter(f"{PREFIX}config_reloads", "Successful config reloads",
                                      registry=r)
        # Known label values exist from the start at 0, so rate() and alerts see a series
        # before the first drop or failure.
        for reason in ("max_bytes", "max_age", "write_failed", "too_large"):
            self.buffer_dropped.labels(reason=reason)
        for reason in ("auth", "refused", "tls", "error", "takeover"):
            self.uplink_connect_errors.labels(reason=reason)
        for evidence in ("reason_code", "quick_losses"):
            self.uplink_session_takeovers.labels(evidence=evidence)
        self.loop_lag = Gauge(f"{PREFIX}event_loop_lag_seconds",
                              "How late the event loop ran a 1 s heartbeat", registry=r)

    def forget_device(self, device: str) -> None:
        """Drop every core series of `device` (it was removed, or restarts with new options)."""
        for metric in (self.device_up, self.device_last_success, self.readings,
                       self.poll_duration, self.poll_overruns):
            with contextlib.suppress(KeyError):
                metric.remove(device)
        # the error kinds a device has seen, through the public collect() API
        kinds = {s.labels["kind"] for family in self.poll_errors.collect()
                 for s in family.samples if s.labels.get("device") == device}
        for kind in kinds:
            with contextlib.suppress(KeyError):
                self.poll_errors.remove(device, kind)

    def _get(self, cls: type[M], name: str, doc: str, labels: Sequence[str],
             **kw: object) -> M:
        full = name if name.startswith(PREFIX) else PREFIX + name
        existing = self._extra.get(full)
        if existing is not None:
            if not isinstance(existing, cls):
                raise TypeError(f"metric {full} already exists as {type(existing).__name__}")
            return existing
        made = cls(full, doc, list(labels), registry=self.registry, **kw)  # type: ignore[arg-type]
        self._extra[full] = made
        return made

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """A driver counter (`_total` is added by the client library)."""
        return self._get(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """A driver gauge such as `modem_signal_rsrp_dbm`."""
        return self._get(Gauge, name, doc, labels)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        """A driver histogram."""
        return self._get(Histogram, name, doc, labels, buckets=tuple(buckets))
