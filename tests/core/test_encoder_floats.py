"""A float's text in a chunk is its repr(), whether the encoder has seen the value before."""

from __future__ import annotations

import re

from gateway.buffer.encoder import FLOAT_RELEARN, FLOAT_TEXTS, ChunkEncoder
from gateway.model import Reading

VALUE = re.compile(r'"value":([^,]*),')


def texts(enc: ChunkEncoder, values: list[float]) -> list[str]:
    body = enc.encode(1, [Reading("m1", f"p{i}", v, 1_764_345_600_123, "V")
                          for i, v in enumerate(values)])
    return VALUE.findall(body)


VALUES = [230.4, 230.4, 0.0, -0.0, -0.0, 0.0, 1e16, 1e-05, 0.1 + 0.2, 5e-324,
          1.7976931348623157e308, -230.4, 2304 / 10, 12345.6, -1e-300]


def test_repeated_values_are_written_as_repr_including_both_zeros() -> None:
    enc = ChunkEncoder()
    first = texts(enc, VALUES)
    assert first == [repr(v) for v in VALUES]
    assert first[2:6] == ["0.0", "-0.0", "-0.0", "0.0"]
    assert texts(enc, VALUES[::-1]) == [repr(v) for v in VALUES[::-1]]


def test_more_distinct_values_than_kept_stay_exact_bounded_and_are_learnt_again() -> None:
    enc = ChunkEncoder()
    values = [i / 10 + 0.05 for i in range(FLOAT_TEXTS + 500)]
    assert texts(enc, values) == [repr(v) for v in values]
    assert len(enc._floats) == FLOAT_TEXTS
    assert enc._floats[values[0]] == repr(values[0])
    later = [v + 1000 for v in values[:100]]
    while enc._since_learnt + len(later) < FLOAT_RELEARN:  # full: nothing new is kept
        assert texts(enc, later) == [repr(v) for v in later]
    assert later[0] not in enc._floats
    assert texts(enc, later) == [repr(v) for v in later]  # relearning begins after this
    assert texts(enc, later) == [repr(v) for v in later]
    assert set(enc._floats) == set(later)
