"""Ed25519 public keys as the config gives them: PEM or raw base64, parsed without a library.

Kept free of `cryptography` so `parkgate check` validates keys without importing it; the
32 raw bytes go to `signing` when a request is verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo up to its 32 key bytes (RFC 8410)."""

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


class KeyProblem(ValueError):
    """A verify key that is not an Ed25519 public key; the message says what it is instead."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """One operator key: its 32 raw bytes and the short id audits name it by."""

    raw: bytes

    @property
    def key_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the raw key (what `keygen` prints)."""
        return key_id(self.raw)


def key_id(raw: bytes) -> str:
    """The id of a raw public key, as audits and `parkgate command keygen` show it."""
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyProblem("is neither PEM nor base64") from None


def parse_public_key(text: str) -> PublicKey:
    """An Ed25519 public key from PEM (`-----BEGIN PUBLIC KEY-----`) or raw base64."""
    text = text.strip()
    if not text:
        raise KeyProblem("is empty")
    m = _PEM.search(text)
    if m:
        label = m.group(1)
        if "PRIVATE" in label:
            raise KeyProblem("is a PRIVATE key: give the gateway the public key (the .pub "
                             "file from parkgate command keygen) and keep the private key "
                             "with the operator")
        if label != "PUBLIC KEY":
            raise KeyProblem(f"is a PEM '{label}', not a PUBLIC KEY")
        der = _b64(m.group(2))
        if len(der) != 44 or not der.startswith(SPKI_PREFIX):
            raise KeyProblem("is a public key but not an Ed25519 one (RSA, EC?)")
        return PublicKey(der[len(SPKI_PREFIX):])
    if text.startswith("-----BEGIN"):
        raise KeyProblem("is a PEM block without its END line")
    raw = _b64(text)
    if len(raw) == 44 and raw.startswith(SPKI_PREFIX):
        return PublicKey(raw[len(SPKI_PREFIX):])  # DER in base64 without the PEM lines
    if len(raw) != 32:
        raise KeyProblem(f"decodes to {len(raw)} bytes; an Ed25519 public key is 32")
    return PublicKey(raw)


def public_pem(raw: bytes) -> str:
    """The PEM text of a raw Ed25519 public key (what `keygen` writes to the .pub file)."""
    body = base64.b64encode(SPKI_PREFIX + raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
