"""The one retry policy (gateway/backoff.py)."""

from __future__ import annotations

import random

from gateway.backoff import Backoff


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
