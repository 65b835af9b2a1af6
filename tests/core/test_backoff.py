"""The one retry policy (gateway/backoff.py)."""

from __future__ import annotations

import random

import pytest

from gateway.backoff import Backoff, ProbePacing


def test_full_jitter_grows_to_the_cap_and_resets() -> None:
    b = Backoff(base=0.5, cap=4.0, _rng=random.Random(1))
    for n in range(10):
        ceiling = min(4.0, 0.5 * 2**n)
        assert 0.0 <= b.next_delay() <= ceiling
    assert b.attempts == 10
    assert 2.0 <= b.max_out() <= 4.0  # bad credentials: at the cap at once
    b.reset()
    assert b.next_delay() <= 0.5


def test_upper_half_jitter_keeps_delays_growing() -> None:
    """`low=0.5`, as the uplink holds a refused device: never below half the ceiling."""
    b = Backoff(base=2.0, cap=300.0, low=0.5, _rng=random.Random(2))
    delays = [b.next_delay() for _ in range(12)]
    for n, d in enumerate(delays):
        ceiling = min(300.0, 2.0 * 2**n)
        assert ceiling / 2 <= d <= ceiling, (n, d)
    assert min(delays[8:]) >= 150.0


def test_floor() -> None:
    b = Backoff(base=0.001, cap=0.002, floor=0.05)
    assert all(b.next_delay() == 0.05 for _ in range(5))


def test_probe_pacing_grows_with_the_outage_not_the_probes() -> None:
    p = ProbePacing(base=0.5, slope=240.0, cap=15.0)
    assert p.ceiling(0.0) == 0.5
    assert p.ceiling(-5.0) == 0.5  # a clock read before the outage began
    assert p.ceiling(60.0) == pytest.approx(0.75)  # a minute's outage: under a second
    assert p.ceiling(600.0) == pytest.approx(3.0)
    assert p.ceiling(3600.0) == 15.0  # an hour: capped at backoff_max
    assert p.ceiling(86400.0) == 15.0
    ceilings = [p.ceiling(t) for t in range(0, 4000, 10)]
    assert ceilings == sorted(ceilings)


@pytest.mark.parametrize("outage_s", [0.0, 30.0, 60.0, 900.0, 7200.0])
def test_probe_delays_stay_in_their_band(outage_s: float) -> None:
    p = ProbePacing(cap=15.0)
    rng = random.Random(3)
    c = p.ceiling(outage_s)
    firsts = [p.delay(outage_s, rng, first=True) for _ in range(2000)]
    laters = [p.delay(outage_s, rng) for _ in range(2000)]
    assert all(0.0 <= d <= c for d in firsts)
    assert all(c / 2 <= d <= c for d in laters)
    # full jitter on the first probe: phases spread over the whole interval
    assert min(firsts) < 0.05 * c
    assert max(firsts) > 0.95 * c


def test_probe_phases_of_a_fleet_spread_out() -> None:
    """200 gateways lose the broker at the same instant: after a few seconds of probing, the
    moments they probe are spread over the interval, not bunched (which would become a
    connect storm when the broker returns)."""
    p = ProbePacing()
    rng = random.Random(4)
    phases = []
    for _ in range(200):
        t, first = 0.0, True
        while t < 5.0:
            t += p.delay(t, rng, first=first)
            first = False
        phases.append(t - 5.0)  # when, after 5 s, this gateway probes next
    c = p.ceiling(5.0)
    buckets = [0] * 10
    for ph in phases:
        buckets[min(9, int(10 * ph / c))] += 1
    assert max(buckets) <= 40, buckets  # uniform is 20 per tenth of the interval

