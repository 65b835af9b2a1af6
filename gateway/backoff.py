"""The one retry policy: capped exponential backoff with full jitter, and probe pacing."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for successive failures: `uniform(low * c, c)`, `c = min(cap, base * factor**n)`.

    Full jitter (`low` 0) keeps a fleet of gateways (or thirty meters on a bus) from
    retrying in lockstep after a shared outage; `low` 0.5 keeps the delays growing for one
    client with many independent retries (the minimum of many full-jitter delays is small).
    `max_out()` jumps to the cap, for failures that will not heal soon (bad credentials, an
    address the device rejects).
    """

    base: float = 0.5
    cap: float = 60.0
    factor: float = 2.0
    floor: float = 0.0
    low: float = 0.0
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """Delay before the next attempt; counts one failure."""
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return max(self.floor, self._rng.uniform(self.low * ceiling, ceiling))

    def max_out(self) -> float:
        """Delay at the cap (with jitter in its upper half); counts one failure."""
        self.attempts += 1
        return self._rng.uniform(self.cap / 2, self.cap)

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempts = 0


@dataclass(frozen=True, slots=True)
class ProbePacing:
    """Intervals between cheap reachability probes while a peer is gone (pure functions).

    The interval grows with how long the outage has lasted, not with how many probes
    failed: `ceiling(t) = min(cap, base + t / slope)`, 0.5 s at first, 0.75 s after a
    minute, 3 s after ten, `cap` after about an hour. So the wait after the peer returns
    is at most `base` plus about 0.4 % of the outage, and a long outage costs few probes.
    """

    base: float = 0.5
    slope: float = 240.0
    cap: float = 15.0

    def ceiling(self, outage_s: float) -> float:
        """The longest interval `outage_s` seconds into an outage."""
        return min(self.cap, self.base + max(0.0, outage_s) / self.slope)

    def delay(self, outage_s: float, rng: random.Random, *, first: bool = False) -> float:
        """The wait before the next probe: full jitter for the `first` one (a fleet that
        lost its broker at the same instant spreads its probe phases at once), upper-half
        jitter after it (no burst of short intervals)."""
        ceiling = self.ceiling(outage_s)
        return rng.uniform(0.0 if first else ceiling / 2, ceiling)
