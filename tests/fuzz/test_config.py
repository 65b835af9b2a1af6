"""The config loader on random YAML: it accepts, or lists problems as FILE:LINE:COL: path: msg.

Anything else (a traceback from pydantic, the YAML loader or the substitution code) would reach a
field engineer as a crash of `parkgate check`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigProblems, LoadedConfig, parse_config
from gateway.driver import discover_drivers

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x07", "\x08", "\x1b", "\x7f", "\ufffe"])
@pytest.mark.parametrize(("where", "text", "line", "col"), [
    ("value", "gateway:\n  id: gw{c}\n", 2, 9),
    ("key", "gateway:\n  i{c}d: gw\n", 2, 4),
    ("comment", "# about{c}\ngateway: {{id: gw}}\n", 1, 8),
    ("quoted", 'gateway:\n  site: "lijia"\n  id: "g{c}w"\n', 3, 9),
])
def test_control_character_gives_one_line_with_its_position(
        char: str, where: str, text: str, line: int, col: int) -> None:
    """A character YAML forbids: exactly one problem, at that character, nothing else."""
    out = check(text.format(c=char))
    assert isinstance(out, ConfigProblems), (where, out)
    assert [str(p) for p in out.problems] == [
        f"cfg.yaml:{line}:{col}: (yaml): character U+{ord(char):04X} is not allowed in a YAML "
        "file (a binary or corrupted file?)"], where


@pytest.mark.parametrize(("brk", "shown"), [
    ("\n", "\\n"), ("\r", "\\r"), ("\r\n", "\\r\\n"), ("\x85", "\\x85"),
    ("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\x0b", "\\x0b"), ("\x0c", "\\x0c"),
    ("\x1b[2J", "\\x1b[2J"), ("\x07", "\\x07"),
])
def test_key_with_line_break_gives_one_line(brk: str, shown: str) -> None:
    """A key holding a line break (or a terminal control): one problem, on one line, at
    the key, the break escaped."""
    key = f"a{brk}b"
    lines = dump(VALID).splitlines(keepends=True)
    assert lines[0] == "gateway:\n"
    text = "".join([lines[0], f"  {json.dumps(key)}: 1\n", *lines[1:]])  # "a\u2028b" etc.
    out = check(text)
    assert isinstance(out, ConfigProblems), out
    assert str(out) == f"cfg.yaml:2:3: gateway.a{shown}b: unknown key 'a{shown}b'"
    assert "\n" not in str(out) and all(c.isprintable() for c in str(out))


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


# --- the loader on hostile shapes, under memory and CPU limits ----------------------------

def _alias_bomb(levels: int, width: int, where: str) -> str:
    """`levels` anchors, each a list of `width` aliases of the one before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    if where == "top":
        return "\n".join(lines) + "\n"
    body = "".join(f"    {line}\n" for line in lines)
    if where == "device":
        return dump(VALID) + f"  - name: bomb\n    driver: sim\n{body}"
    return (dump({k: v for k, v in VALID.items() if k != "devices"}) + "x:\n" + body
            + f"devices:\n  - <<: [{', '.join([f'*l{levels - 1}'] * width)}]\n    name: m\n")


def _nesting(depth: int, flow: bool) -> str:
    if flow:
        return "gateway: " + "[" * depth + "]" * depth + "\n"
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}x\n"


def _large(size: int, where: str) -> str:
    blob = "x" * size
    return {"key": f"{blob}: 1\n", "value": f"gateway: {{id: {blob}}}\n",
            "comment": f"# {blob}\n", "list": "devices: [" + "1," * (size // 2) + "1]\n"}[where]


def _substitutions(count: int, target: str) -> str:
    devices = "".join(f"  - {{name: d{i}, driver: sim, timeout: '${{{target}}}'}}\n"
                      for i in range(count))
    return dump({k: v for k, v in VALID.items() if k != "devices"}) + "devices:\n" + devices


def _topic(spec: str) -> str:
    return dump({**VALID, "uplink": {"mqtt": {"brokers": ["mqtt://127.0.0.1:1883"],
                                              "topic": f"p/{{{spec}}}"}}})


HOSTILE = st.one_of(
    st.builds(_alias_bomb, st.integers(1, 12), st.integers(1, 12),
              st.sampled_from(["top", "device", "merge"])),
    st.builds(_nesting, st.integers(1, 3000), st.booleans()),
    st.builds(_large, st.integers(0, 5 * 2**20), st.sampled_from(["key", "value", "comment",
                                                                  "list"])),
    st.builds(_substitutions, st.integers(1, 3000),
              st.sampled_from(["file:/dev/zero", "file:/dev/urandom", "file:/proc/self/mem",
                               "file:/proc/self/environ", "file:/", "HOME", "NOPE:-x" * 50])),
    st.builds(_topic, st.sampled_from(["device:>999999999", "device:^{0}", "device!r",
                                       "device.__class__", "site:x<99999999"])
              | st.text(max_size=30)),
)
LIMIT_AS = 1 << 30
LIMIT_CPU = 300
MAX_CPU_PER_FILE = 1.0


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(HOSTILE)
def hostile_files(text: str) -> None:
    """Not collected by itself: `test_the_loader_under_limits` runs it in a limited child."""
    started = time.process_time()
    check(text)
    cpu = time.process_time() - started
    assert cpu < MAX_CPU_PER_FILE, f"{cpu:.2f} CPU seconds for {text[:200]!r}"


def test_the_loader_under_memory_and_cpu_limits() -> None:
    """Hostile shapes (alias bombs, nesting, sizes, endless secret files, format specs)
    through the loader in a child process limited to 1 GiB and 300 CPU seconds: a blow-up
    kills the child and fails this test, not the machine."""
    code = ("import resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_AS}, {LIMIT_AS})); "
            f"resource.setrlimit(resource.RLIMIT_CPU, ({LIMIT_CPU}, {LIMIT_CPU})); "
            "from tests.fuzz.test_config import hostile_files; hostile_files(); "
            "print('maxrss_mib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=LIMIT_CPU * 2, check=False)
    assert done.returncode == 0, (done.returncode, done.stdout[-3000:], done.stderr[-5000:])
    assert "maxrss_mib" in done.stdout
