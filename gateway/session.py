"""The MQTT session's identity and how it is lost: the default client id, session takeover.

A broker keeps one session per client id: a second client connecting with the same id
takes the session over and the first is disconnected (MQTT 5 tells it so with DISCONNECT
reason 0x8E; 3.1.1 just closes the socket). Two gateways configured with the same
`gateway.id` then kick each other off every few seconds. The default client id therefore
carries a per-install suffix, and a takeover is named as such in the log and a metric.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

SESSION_TAKEN_OVER = 0x8E
"""MQTT 5 DISCONNECT reason code: another connection uses this client id."""

MAX_CLIENT_ID = 128
"""AWS IoT's limit (the spec only promises 23; Mosquitto, EMQX and HiveMQ take 65535)."""

QUICK_LOSSES = 3
"""Sessions lost in a row soon after CONNACK before a takeover is suspected (MQTT 3.1.1)."""

_SUFFIX = re.compile(r"^[0-9a-f]{8}$")


def install_id_path(buffer_path: Path) -> Path:
    """Where the per-install suffix lives: next to the buffer, like its `.seq` file."""
    return Path(str(buffer_path) + ".install-id")


def install_suffix(buffer_path: Path) -> str | None:
    """The per-install suffix (8 hex digits), created once; None if it cannot be kept.

    It lives in its own file next to the buffer, not in the buffer database, so it stays
    the same across restarts, upgrades and a buffer file that is found corrupt and moved
    aside: the broker then resumes the same session (queued downlink messages, ACLs or a
    platform registry keyed on the client id). A new SD card or a wiped state directory
    gets a new one (a new session, once). A cloned disk image carries the file along:
    delete it on the clone, or set `client_id` explicitly.
    """
    path = install_id_path(buffer_path)
    for _ in range(2):
        try:
            text = _read_small(path)
            if _SUFFIX.match(text):
                return text
            path.unlink()  # damaged: replace it (a new session, once)
        except FileNotFoundError:
            pass
        except OSError:  # unreadable (permissions, a directory): the caller says so
            return None
        suffix = secrets.token_hex(4)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue  # written meanwhile by someone else: read theirs
        except OSError:
            return None
        try:
            os.write(fd, (suffix + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return suffix
    return None


def _read_small(path: Path) -> str:
    """The first bytes of a regular file, not following a symlink (never /dev/zero)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return os.read(fd, 64).decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)


def default_client_id(site: str, gateway: str, suffix: str | None) -> str:
    """`parkgate-{site}-{gateway}-{suffix}`: unique per site, gateway and install.

    Beyond `MAX_CLIENT_ID` characters the site and gateway become a short hash.
    """
    tail = f"-{suffix}" if suffix else ""
    cid = f"parkgate-{site}-{gateway}{tail}"
    if len(cid) > MAX_CLIENT_ID:
        digest = hashlib.sha256(f"{site}\0{gateway}".encode()).hexdigest()[:16]
        cid = f"parkgate-{digest}{tail}"
    return cid


def disconnect_code(exc: BaseException | None) -> int | None:
    """The reason code of an aiomqtt disconnection error (paho's ReasonCode or int)."""
    rc = getattr(exc, "rc", None)
    if rc is None:
        return None
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def taken_over(exc: BaseException | None) -> bool:
    """Whether a disconnection is the broker's MQTT 5 "Session taken over"."""
    return disconnect_code(exc) == SESSION_TAKEN_OVER


@dataclass(slots=True)
class QuickLosses:
    """Counts sessions lost soon after CONNACK in a row, the 3.1.1 sign of a takeover
    (a broker that drops us for a publish it refuses looks the same: the log says both)."""

    streak: int = 0

    def lost(self, lasted_s: float, quick_s: float) -> bool:
        """A session ended after `lasted_s`; True when a takeover should be suspected."""
        if lasted_s >= quick_s:
            self.streak = 0
            return False
        self.streak += 1
        return self.streak % QUICK_LOSSES == 0
