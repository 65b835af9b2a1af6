"""Pure checks of config values: broker URLs, topic templates, Sparkplug ids, topic clashes.

Each returns why a value is wrong (a message for `parkgate check`), or None; the section
models (sections.py) and the loader (load.py) place the messages.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.config.sections import Config
    from gateway.yamlpos import Loc

_BROKER = re.compile(r"(mqtts?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?/?")


def broker_url_problem(url: str) -> str | None:
    """Why `url` is not `mqtt[s]://HOST[:PORT]`, or None. Never echoes credentials."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        shown = f"{scheme}://***@{rest.split('/', 1)[0].rsplit('@', 1)[1]}"
        return (f"{shown}: credentials in a broker URL are not used (and would show in "
                "/metrics, /readyz and the status message): put them in uplink.mqtt.username "
                "and password (password: ${file:/etc/parkgate/mqtt-password} keeps it out of "
                "this file)")
    m = _BROKER.fullmatch(url)
    if not m or not 1 <= int(m.group(3) or 1883) <= 65535:
        return f"{url!r} is not a broker URL: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    return None


def is_loopback_url(url: str) -> bool:
    """Whether the broker at `url` is on this host (plain mqtt:// to it exposes nothing)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sparkplug_id_problem(value: str) -> str | None:
    """Why `value` cannot be a Sparkplug group, edge node or host id, or None."""
    if not value:
        return "must not be empty"
    bad = sorted({c for c in value if c in "+#/"})
    if bad:
        return f"{value!r} contains {' '.join(bad)}: Sparkplug ids cannot contain + # /"
    return None


TOPIC_MAX_BYTES = 65_535
"""MQTT's limit on a topic name, in UTF-8 bytes."""
NAME_MAX = 64
_PLACEHOLDERS = frozenset({"site", "gateway", "device"})
"""Longest gateway id, site and device name: what `{gateway}`, `{site}`, `{device}` add."""


def publish_topic_problem(template: str) -> str | None:
    """Why no broker would take a topic made from `template`, or None.

    MQTT 3.1.1/5: UTF-8 without U+0000 (brokers refuse control characters and
    noncharacters too), 1 to 65,535 bytes, no wildcards in a publish topic; `$` topics are
    the broker's own. Checked with every placeholder at its longest.
    """
    try:
        # a format spec such as {device:>99999999} would build a string of that size
        for _text, name, spec, conversion in string.Formatter().parse(template):
            if name is not None and (name not in _PLACEHOLDERS or spec or conversion):
                raise ValueError(f"'{{{name}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}}'")
        longest = template.format(site="s" * NAME_MAX, gateway="g" * NAME_MAX,
                                  device="d" * NAME_MAX)
    except (KeyError, IndexError, ValueError) as exc:
        return f"topic template may use only {{site}}, {{gateway}} and {{device}} ({exc})"
    if not template:
        return "a topic cannot be empty"
    if "+" in template or "#" in template:
        return "a topic to publish to cannot contain the wildcards + or #"
    if template.startswith("$"):
        return "topics starting with $ belong to the broker ($SYS/...): choose another"
    for char in template:
        code = ord(char)
        if code == 0:
            return "a topic cannot contain a NUL character (U+0000): no broker accepts it"
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"a topic cannot contain the control character U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return f"a topic must be UTF-8 text: U+{code:04X} is half a surrogate pair"
        if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            return f"a topic cannot contain the noncharacter U+{code:04X}"
    size = len(longest.encode("utf-8"))
    if size > TOPIC_MAX_BYTES:
        return (f"topic is {size:,} bytes with {{site}}, {{gateway}} and {{device}} at their "
                f"longest ({NAME_MAX} characters); MQTT allows {TOPIC_MAX_BYTES:,}")
    return None


def topic_collisions(config: Config, devices: Iterable[str]) -> list[tuple[Loc, str]]:
    """A command, reply or device state topic that is also a device's data topic or the
    status topic (a data template of another depth, a device named `cmd`)."""
    site, gw = config.gateway.site, config.gateway.id
    mqtt = config.uplink.mqtt
    names = list(devices)
    problems: list[tuple[Loc, str]] = []
    status = mqtt.status_topic.format(site=site, gateway=gw)
    taken = {status: "the status topic"}
    for name in names:
        taken.setdefault(mqtt.topic.format(site=site, gateway=gw, device=name),
                         f"the data topic of device '{name}'")
    for name in names if mqtt.device_state and mqtt.dialect == "parkgate" else ():
        state = f"{status}/{name}"  # retained device state (the parkgate dialect)
        if state in taken:
            message = (f"{state} is both {taken[state]} and the state topic of device "
                       f"'{name}' (status_topic/DEVICE): choose another data topic or "
                       "status_topic")
            problems.append((("uplink", "mqtt", "topic"), message))
            break
    cmds = config.commands
    if not cmds.enabled:
        return problems
    for key, topic in zip(("topic", "reply_topic"), cmds.topics(site, gw), strict=True):
        if topic in taken:
            message = f"{topic} is also {taken[topic]}: choose another topic (or rename the device)"
            problems.append((("commands", key), message))
    return problems
