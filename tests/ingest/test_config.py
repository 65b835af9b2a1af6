"""`parkgate check` knows ingest files: same FILE:LINE:COL: path: message lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigProblems
from gateway.ingest.settings import is_ingest_document, parse_ingest_config
from tests.support import ROOT


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_the_example_is_valid() -> None:
    res = check(ROOT / "config" / "ingest.example.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK (ingest: 1 broker(s) -> public.readings)" in res.stdout


def test_the_agents_example_is_still_checked_as_an_agent_file() -> None:
    res = check(ROOT / "config" / "example.yaml")
    assert res.returncode == 0 and "device(s)" in res.stdout


def test_every_problem_with_its_position(tmp_path: Path) -> None:
    f = tmp_path / "ingest.yaml"
    f.write_text('source:\n  brokers: ["http://x"]\n  topc: a\n  topic: "$share/g/x"\n'
                 "sink:\n  table: Bad-Name\n  batch_rows: 0\ngaps: {after: 5x}\n"
                 "metrics: {listen: nowhere}\n")
    res = check(f)
    assert res.returncode == 2
    assert res.stdout.splitlines() == [
        f"{f}:2:12: source.brokers: 'http://x' is not a broker URL: write mqtt://HOST[:PORT]"
        " or mqtts://HOST[:PORT]",
        f"{f}:3:3: source.topc: unknown key 'topc' (did you mean 'topic'?)",
        f"{f}:4:10: source.topic: write the plain topic filter; the ingest adds "
        "$share/{share}/",
        f"{f}:5:1: sink.postgres: required key is missing",
        f"{f}:6:10: sink.table: String should match pattern '^[a-z_][a-z0-9_]{{0,40}}$'",
        f"{f}:7:15: sink.batch_rows: Input should be greater than or equal to 1",
        f"{f}:8:15: gaps.after: '5x' is not a duration: write a number and a unit, such as "
        "500ms, 5s, 2m or 1h",
        f"{f}:9:19: metrics.listen: 'nowhere' is not HOST:PORT (for example 127.0.0.1:9881)",
    ]


def test_secrets_are_substituted_and_never_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    bad = (f"source: {{brokers: [mqtt://b], password: '${{file:{secret}}}'}}\n"
           f"sink: {{postgres: db, batch_delay: '${{file:{secret}}}'}}\n")
    with pytest.raises(ConfigProblems) as err:
        parse_ingest_config(bad, tmp_path / "i.yaml")
    assert "s3cret-pw" not in str(err.value) and "'***' is not a duration" in str(err.value)
    ok = parse_ingest_config(f"source: {{brokers: [mqtt://b], password: '${{file:{secret}}}'}}"
                             "\nsink: {postgres: db}\n", tmp_path / "i.yaml")
    assert ok.config.source.password is not None
    assert ok.config.source.password.get_secret_value() == "s3cret-pw"
    assert ok.secrets == {"s3cret-pw"}


def test_detection_by_top_level_keys() -> None:
    assert is_ingest_document("source: {}\n")
    assert is_ingest_document("sink: {}\n")
    assert not is_ingest_document("gateway: {id: x}\nuplink: {}\n")
    assert not is_ingest_document("[unclosed")
