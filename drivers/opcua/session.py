"""One OPC UA connection: security, trust, authentication, and errors in our taxonomy.

Everything taken from asyncua's client lives here and in `driver.py`; asyncua's own
reconnect loop stays off, because on a certificate error it re-reads the server's
endpoints and would accept a changed certificate silently. The supervisor reconnects
instead (close, backoff, open), and every open verifies the certificate again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from structlog.typing import FilteringBoundLogger

from gateway.errors import DeviceConfigError, DeviceError, TransientError

from . import trust
from .options import AnonymousAuth, Auth, CertificateAuth, Security, UserAuth


class _ExpectedLoss(logging.Filter):
    """Drops asyncua's traceback for a connection that closed: the driver reports the loss
    itself, as one line, and the supervisor reconnects."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionError | OSError | asyncio.CancelledError)


# asyncua logs every publish at INFO (formatting whole responses) and warns at each close of
# a dead connection ("close_session was called but connection is closed"): errors only
logging.getLogger("asyncua").setLevel(logging.ERROR)
logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_ExpectedLoss())

CONFIG_STATUS = frozenset({
    "BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected",
    "BadSecurityPolicyRejected", "BadSecurityModeRejected", "BadSecurityChecksFailed",
    "BadApplicationSignatureInvalid", "BadUserSignatureInvalid", "BadNotSupported",
})
"""Service results that retrying will not fix until someone changes a config or a trust."""
POLICY_URIS = {"Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256.URI}


def classify(exc: BaseException, what: str) -> DeviceError:
    """An asyncua or socket failure as a `TransientError` or a `DeviceConfigError`."""
    if isinstance(exc, DeviceError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        code = int(exc.code)
        name = ua.StatusCode(ua.UInt32(code)).name
        if name in CONFIG_STATUS or name.startswith("BadCertificate"):
            return DeviceConfigError(f"{what}: the server refused: {name} (0x{code:08X})",
                                     kind="auth" if "User" in name or "Identity" in name
                                     else "certificate")
        return TransientError(f"{what}: {name} (0x{code:08X})", kind="status")
    if isinstance(exc, TimeoutError):
        return TransientError(f"{what}: no answer in time", kind="timeout")
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"{what}: connection refused (server down or wrong port?)",
                              kind="disconnected")
    if isinstance(exc, OSError | ConnectionError):
        return TransientError(f"{what}: {exc or type(exc).__name__}", kind="disconnected")
    if isinstance(exc, UaError):
        return TransientError(f"{what}: {exc}", kind="protocol")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}", kind="exception")


@dataclass(frozen=True, slots=True)
class Settings:
    """How to reach and log into one server."""

    endpoint: str
    security: Security
    auth: Auth
    timeout: float
    keepalive: float = 5.0


def _application_uri(path: str) -> str | None:
    """The URI in a certificate's subjectAltName: the client must announce the same one."""
    data = Path(path).read_bytes()
    cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def server_certificate(endpoint: str, policy: str, mode: str,
                             request_timeout: float) -> bytes:
    """The certificate of the endpoint offering `policy`/`mode` (GetEndpoints, no security)."""
    probe = Client(endpoint, timeout=request_timeout)
    try:
        endpoints = await probe.connect_and_get_server_endpoints()
    except Exception as exc:  # noqa: BLE001 - classified for the caller
        raise classify(exc, f"{endpoint}: GetEndpoints") from None
    for ep in endpoints:
        if (ep.SecurityPolicyUri == POLICY_URIS[policy]
                and ep.SecurityMode == getattr(ua.MessageSecurityMode, mode)):
            return trust.first_certificate(bytes(ep.ServerCertificate or b""))
    offered = sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}"
                      for ep in endpoints})
    raise DeviceConfigError(f"{endpoint} offers no endpoint with {policy}/{mode}; it offers "
                            f"{', '.join(offered)}", kind="config")


async def _secure(client: Client, s: Settings, log: FilteringBoundLogger | None) -> None:
    sec = s.security
    mode = sec.effective_mode()
    der = await server_certificate(s.endpoint, sec.policy, mode, s.timeout)
    if not der:
        raise DeviceConfigError(f"{s.endpoint} sends no certificate for {sec.policy}/{mode}",
                                kind="certificate")
    kept = trust.verify(der, sec.trusted, tofu=sec.trust_on_first_use, endpoint=s.endpoint)
    if kept is not None and log is not None:
        log.warning("server certificate trusted on first use; a different one will be "
                    "refused", thumbprint=trust.thumbprint(der), kept=str(kept),
                    subject=trust.common_name(der))
    assert sec.certificate is not None  # the model requires both with a policy
    assert sec.private_key is not None
    try:
        uri = _application_uri(sec.certificate)
    except (OSError, ValueError) as exc:
        raise DeviceConfigError(f"security.certificate {sec.certificate}: cannot be read "
                                f"({exc})", kind="certificate") from None
    if uri:
        client.application_uri = uri
    password = (sec.private_key_password.get_secret_value()
                if sec.private_key_password is not None else None)
    try:
        await client.set_security(
            security_policies.SecurityPolicyBasic256Sha256, sec.certificate, sec.private_key,
            private_key_password=password, server_certificate=der,
            mode=getattr(ua.MessageSecurityMode, mode))
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceConfigError(f"security.certificate/private_key: cannot be loaded ({exc})",
                                kind="certificate") from None


async def _login(client: Client, auth: Auth) -> None:
    if isinstance(auth, AnonymousAuth):
        return
    if isinstance(auth, UserAuth):
        client.set_user(auth.username)
        client.set_password(auth.password.get_secret_value())
        return
    assert isinstance(auth, CertificateAuth)
    password = (auth.private_key_password.get_secret_value()
                if auth.private_key_password is not None else None)
    try:
        await client.load_client_certificate(auth.certificate)
        await client.load_private_key(Path(auth.private_key), password)
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceConfigError(f"auth.certificate/private_key: cannot be loaded ({exc})",
                                kind="auth") from None


OnLost = Callable[[Exception], Coroutine[Any, Any, None]]


async def connect(s: Settings, log: FilteringBoundLogger | None = None,
                  on_lost: OnLost | None = None) -> Client:
    """A connected, activated client; `TransientError` or `DeviceConfigError` otherwise."""
    client = Client(s.endpoint, timeout=s.timeout, watchdog_intervall=s.keepalive)
    client.name = client.description = "parkgate"
    client.application_uri = "urn:parkgate:client"
    client.session_timeout = 600_000  # what servers commonly grant; asking more only warns
    client.connection_lost_callback = on_lost
    if s.security.policy != "None":
        await _secure(client, s, log)
    await _login(client, s.auth)
    try:
        await client.connect(auto_reconnect=False)
    except Exception as exc:  # noqa: BLE001 - classified: config vs transient
        await disconnect(client)
        raise classify(exc, f"{s.endpoint}: connect") from None
    return client


async def disconnect(client: Client, within: float = 2.0) -> None:
    """Close session, channel and socket; never raises (the server may be gone)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            await client.disconnect()
    with contextlib.suppress(Exception):
        client.disconnect_socket()
