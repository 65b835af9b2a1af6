"""The config loader on random YAML: it accepts, or lists problems as FILE:LINE:COL: path: msg.

Anything else (a traceback from pydantic, ruamel or the substitution code) would reach a
field engineer as a crash of `parkgate check`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigProblems, LoadedConfig, parse_config
from gateway.driver import discover_drivers

PATH = Path("cfg.yaml")
DRIVERS = discover_drivers()
LINE = re.compile(r"^cfg\.yaml:(\d+):(\d+): (.*?): (\S.*)$")
FUZZ = settings(max_examples=150, deadline=1000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = st.sampled_from(["gateway", "id", "site", "buffer", "path", "max_bytes", "uplink", "mqtt",
                        "brokers", "topic", "batch", "max_readings", "max_delay", "devices",
                        "name", "driver", "interval", "points", "sim", "modbus", "transport",
                        "type", "host", "port", "unit", "profile", "registers", "tls", "ca",
                        "metrics", "listen", "logging", "level", "password", "enabled", "x"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64),
                    st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["${HOME}", "${NOPE_NOT_SET}", "${file:/nonexistent}",
                                     "$${x}", "${}", "${file:}", "5s", "-1s", "1e309s", "64KiB",
                                     "mqtt://h:1", "mqtts://[::1]", "{site}/{x}", "sim", "0x10",
                                     "1_000", ".inf", "~", "&a", "*a", "!!binary x", "-"]))
TREES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(KEYS | st.text(max_size=8), kids, max_size=5),
                     max_leaves=25)

VALID: dict[str, Any] = {
    "gateway": {"id": "gw-1", "site": "lijia"},
    "buffer": {"path": "/tmp/pg-fuzz/buffer.db", "max_bytes": "1MiB"},
    "uplink": {"mqtt": {"brokers": ["mqtt://127.0.0.1:1883"],
                        "batch": {"max_readings": 100, "max_delay": "200ms"}}},
    "metrics": {"listen": "127.0.0.1:9881"},
    "logging": {"level": "info", "format": "json"},
    "devices": [
        {"name": "sim-1", "driver": "sim", "interval": "100ms", "points": 3},
        {"name": "meter", "driver": "modbus", "unit": 1, "profile": "eastron-sdm630",
         "interval": "5s", "transport": {"type": "tcp", "host": "127.0.0.1", "port": 502}},
    ],
}


def check(text: str) -> LoadedConfig | ConfigProblems:
    """parse_config must succeed or raise ConfigProblems: one contract-form line per problem."""
    try:
        return parse_config(text, PATH, DRIVERS)
    except ConfigProblems as caught:
        exc = caught
    assert exc.problems, "ConfigProblems without a problem"
    n_lines = text.count("\n") + 2
    for p in exc.problems:
        line = str(p)
        m = LINE.match(line)
        assert m, f"not FILE:LINE:COL: path: message: {line!r}"
        assert 1 <= int(m.group(1)) <= n_lines and int(m.group(2)) >= 1, line
    assert str(exc).count("\n") == len(exc.problems) - 1  # one line per problem
    return exc


def dump(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def test_the_valid_config_is_valid() -> None:
    loaded = check(dump(VALID))
    assert isinstance(loaded, LoadedConfig), loaded
    assert [d.name for d in loaded.config.devices] == ["sim-1", "meter"]


def test_control_character_gives_one_line_with_its_position() -> None:
    check("gateway:\n  id: gw\x00\n")


def test_key_with_line_break_gives_one_line() -> None:
    check(dump({**VALID, "gateway": {"id": "g", "site": "s", "a\nb": 1}}))


@FUZZ
@given(TREES)
def test_random_yaml_trees(tree: Any) -> None:
    check(dump(tree))


@FUZZ
@given(st.dictionaries(st.sampled_from(list(VALID)), TREES, max_size=6))
def test_random_sections(sections: dict[str, Any]) -> None:
    check(dump({**VALID, **sections}))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(tree: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        tree = dict(tree)
        if not rest and how == "delete":
            tree.pop(head, None)
        elif not rest and how == "rename":
            tree[f"{head}x"] = tree.pop(head)
        else:
            tree[head] = _mutate(tree[head], rest, how, value)
    else:
        tree = list(tree)
        if not rest and how == "delete":
            del tree[head]
        elif not rest and how == "rename":
            tree.append(tree[head])
        else:
            tree[head] = _mutate(tree[head], rest, how, value)
    return tree


MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000),
                               st.sampled_from(["replace", "delete", "rename"]), TREES),
                     min_size=1, max_size=4)


@FUZZ
@given(MUTATIONS)
def test_mutations_of_a_valid_config(mutations: list[tuple[int, str, Any]]) -> None:
    tree: Any = VALID
    for pick, how, value in mutations:
        paths = _paths(tree) if isinstance(tree, dict | list) else []
        if not paths:
            break
        tree = _mutate(tree, paths[pick % len(paths)], how, value)
    check(dump(tree))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3),
                          st.sampled_from([*":-[]{},#&*!|>'\"%@` \t\n", "\x00", "é", "\ufeff"])),
                min_size=1, max_size=6))
def test_text_level_mutations(edits: list[tuple[int, int, str]]) -> None:
    """Characters inserted or deleted anywhere in the YAML text (broken syntax too)."""
    text = dump(VALID)
    for pos, cut, char in edits:
        i = pos % (len(text) + 1)
        text = text[:i] + char + text[i + cut:]
    check(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    check(text)
