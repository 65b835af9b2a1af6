"""The uplink's reconnect policy: probe a gone broker cheaply, back off from a busy one.

The reasoning is in the module doc of `gateway.uplink`. Here: the state one uplink keeps
between connection attempts, apart from the MQTT client, so that `bench/fleet_reconnect.py`
runs hundreds of copies of exactly this policy against one broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from gateway.backoff import Backoff, ProbePacing

STABLE_S = 10.0
"""A connection that lasted this long resets the handshake backoff."""

PROBE_TIMEOUT = 2.0
"""A probe unanswered this long counts as refused (a host that is down drops SYNs)."""


async def tcp_probe(host: str, port: int, limit_s: float) -> bool:
    """Whether `host:port` accepts a TCP connection within `limit_s` (closed at once)."""
    try:
        async with asyncio.timeout(limit_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclass(slots=True)
class Reconnect:
    """When to attempt the next full (TLS and MQTT) handshake after a round of brokers failed.

    `backoff` counts handshakes that failed while the broker accepted TCP; `pacing` paces
    the probes while none does, by the time since the last working session (`down_since`).
    """

    cap: float
    """`uplink.mqtt.backoff_max`: the handshake backoff's and the probe interval's cap."""
    probe_limit_s: float = PROBE_TIMEOUT
    rng: random.Random = field(default_factory=random.Random, repr=False)
    backoff: Backoff = field(init=False)
    pacing: ProbePacing = field(init=False)
    down_since: float = field(default_factory=time.monotonic)
    probes: int = 0
    """Probes sent so far (all outages)."""

    def __post_init__(self) -> None:
        self.backoff = Backoff(base=0.5, cap=self.cap, _rng=self.rng)
        self.pacing = ProbePacing(cap=self.cap)

    def ended(self, connected_since: float | None, now: float) -> bool:
        """A session (connected since `connected_since`) or an attempt (None) ended at
        `now`; True when the session was stable and the backoff starts over."""
        if connected_since is None:
            return False
        self.down_since = now  # an outage lasts as long as no session works
        if now - connected_since >= STABLE_S:
            # a broker that drops us right after CONNACK (a refused publish) keeps its backoff
            self.backoff.reset()
            return True
        return False

    def refused_credentials(self) -> float:
        """The wait after a CONNACK refusing our credentials: at the cap at once."""
        return self.backoff.max_out()

    async def wait(self, brokers: Sequence[tuple[str, int]], log: FilteringBoundLogger,
                   refused: Callable[[], None] | None = None) -> int:
        """Until a broker may be tried: the index of the first one accepting TCP.

        One that accepted at the first probe was up all along, and what failed was TLS,
        MQTT or the session: wait the handshake backoff. One that accepts only after
        failed probes has just come back: go now (the probes' jitter spread the fleet).
        `refused` is called for each round of probes that no broker accepted (a failed
        connection attempt, for the metrics).
        """
        failed = 0
        while True:
            accepted = await asyncio.gather(*(tcp_probe(host, port, self.probe_limit_s)
                                              for host, port in brokers))
            self.probes += len(brokers)
            index = next((i for i, ok in enumerate(accepted) if ok), None)
            if index is not None:
                if failed == 0:
                    await asyncio.sleep(self.backoff.next_delay())
                else:
                    log.info("broker accepts connections again", probes=failed,
                             broker=f"{brokers[index][0]}:{brokers[index][1]}",
                             outage_s=round(time.monotonic() - self.down_since, 1))
                return index
            if refused is not None:
                refused()
            outage = time.monotonic() - self.down_since
            if failed == 0:
                log.warning("no broker accepts connections; probing until one does",
                            every_s=round(self.pacing.ceiling(outage), 2))
            failed += 1
            await asyncio.sleep(self.pacing.delay(outage, self.rng, first=failed == 1))
