"""Ed25519 signatures over a request's canonical form (`cryptography`, imported on first use)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.commands.keys import PublicKey, key_id, public_pem
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


class SignatureProblem(ValueError):
    """A request whose signature is missing or matches none of the keys."""


class Verifier:
    """Checks signatures against the configured keys; the library loads with the first one."""

    def __init__(self, keys: Sequence[PublicKey]) -> None:
        self.keys = tuple(keys)
        self._loaded: list[tuple[PublicKey, Ed25519PublicKey]] | None = None

    def _objects(self) -> list[tuple[PublicKey, Ed25519PublicKey]]:
        if self._loaded is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
                Ed25519PublicKey,
            )

            self._loaded = [(k, Ed25519PublicKey.from_public_bytes(k.raw)) for k in self.keys]
        return self._loaded

    def verify(self, message: bytes, sig: str | None) -> str:
        """The id of the key that signed `message`; `SignatureProblem` if none did."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        if sig is None:
            raise SignatureProblem("the request is not signed (no sig) and this gateway "
                                   "accepts only signed requests")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureProblem("sig is not base64") from None
        if len(raw) != 64:
            raise SignatureProblem(f"sig is {len(raw)} bytes; an Ed25519 signature is 64")
        for key, obj in self._objects():
            try:
                obj.verify(raw, message)
            except InvalidSignature:
                continue
            return key.key_id
        raise SignatureProblem("the signature matches none of commands.verify_keys (wrong "
                               "key, or the request was changed after signing)")


@dataclass(frozen=True, slots=True)
class Signer:
    """An operator's private key, for `parkgate command send`."""

    key: Ed25519PrivateKey

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Load a PEM private key written by `parkgate command keygen` (or openssl)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )
        from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
            load_pem_private_key,
        )

        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the private key {path}: {exc.strerror}") from None
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, message: bytes) -> str:
        """The base64 signature of `message`."""
        return base64.b64encode(self.key.sign(message)).decode()

    @property
    def public_raw(self) -> bytes:
        """The 32 raw bytes of the public key."""
        from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
            Encoding,
            PublicFormat,
        )

        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """The id audits show for requests this key signs."""
        return key_id(self.public_raw)


def keygen(private: Path, public: Path | None = None) -> tuple[Path, str]:
    """Write a new key pair: `private` (PEM, mode 0600, never overwritten) and its public
    key next to it (`.pub`, PEM); returns the public path and the key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    public = public or private.with_name(private.name.removesuffix(".key") + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    signer = Signer(key)
    # O_EXCL: an existing key is never replaced by accident; 0600 from the first byte
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with public.open("x", encoding="ascii") as f:
            f.write(public_pem(signer.public_raw))
    except OSError:
        private.unlink()
        raise
    return public, signer.key_id
