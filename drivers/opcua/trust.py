"""Server certificate trust: a list of trusted certificates, trust on first use, thumbprints.

A server's certificate is accepted only when it is in the trust list (files or
directories of PEM/DER certificates), or, with trust on first use, when the list is still
empty: then it is kept in the trust directory and any other certificate later is refused.
Nothing here is silent: a refusal names the thumbprint seen and the ones trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.errors import DeviceConfigError

CERT_SUFFIXES = frozenset({".der", ".pem", ".crt", ".cer"})


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What identifies a certificate to a human: thumbprints, subject, validity."""

    sha1: str
    sha256: str
    subject: str
    issuer: str
    not_before: str
    not_after: str
    application_uri: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the CLI."""
        return {"thumbprint_sha1": self.sha1, "thumbprint_sha256": self.sha256,
                "subject": self.subject, "issuer": self.issuer,
                "not_before": self.not_before, "not_after": self.not_after,
                "application_uri": self.application_uri}


def first_certificate(der: bytes) -> bytes:
    """The leaf of a DER chain (servers may send their chain concatenated)."""
    if len(der) < 4 or der[0] != 0x30 or der[1] != 0x82:
        return der
    return der[:int.from_bytes(der[2:4], "big") + 4]


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint, as OPC UA names certificates (upper-case hex)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def info(der: bytes) -> CertInfo:
    """Human facts of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    uri: str | None = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        uri = uris[0] if uris else None
    except x509.ExtensionNotFound:
        pass
    return CertInfo(sha1=thumbprint(der), sha256=hashlib.sha256(der).hexdigest().upper(),
                    subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    not_before=cert.not_valid_before_utc.isoformat(),
                    not_after=cert.not_valid_after_utc.isoformat(), application_uri=uri)


def common_name(der: bytes) -> str:
    """The CN of a certificate, or its whole subject."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def read_certificates(path: Path) -> list[bytes]:
    """The DER certificates in one file (PEM may hold several)."""
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(data)]
    x509.load_der_x509_certificate(data)  # raises when it is no certificate
    return [data]


def load_trusted(paths: list[str]) -> dict[str, Path]:
    """SHA-1 thumbprint -> file of every certificate in the trust list.

    A directory that does not exist yet is empty (trust on first use creates it); a file
    that cannot be read or parsed is a config error naming it.
    """
    out: dict[str, Path] = {}
    for text in paths:
        p = Path(text)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in CERT_SUFFIXES)
        elif p.exists() or p.suffix.lower() in CERT_SUFFIXES:
            files = [p]
        else:
            files = []
        for f in files:
            try:
                for der in read_certificates(f):
                    out.setdefault(thumbprint(der), f)
            except (OSError, ValueError) as exc:
                raise DeviceConfigError(f"trusted certificate {f}: cannot be read "
                                        f"({type(exc).__name__}: {exc})", kind="certificate"
                                        ) from None
    return out


def save(der: bytes, directory: Path) -> Path:
    """Keep `der` in `directory` as `<thumbprint>.der` (mode 0644); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{thumbprint(der)}.der"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(der)
    tmp.replace(target)
    return target


def verify(der: bytes, trusted: list[str], *, tofu: bool, endpoint: str) -> Path | None:
    """Accept the server certificate `der` or raise `DeviceConfigError` naming thumbprints.

    Returns the file kept when trust on first use accepted it, else None.
    """
    known = load_trusted(trusted)
    seen = thumbprint(der)
    if seen in known:
        return None
    if tofu and not known:
        if not trusted:
            raise DeviceConfigError("trust_on_first_use needs a `trusted:` directory to keep "
                                    "the first certificate in", kind="certificate")
        directory = Path(trusted[0])
        if directory.exists() and not directory.is_dir():
            raise DeviceConfigError(f"trust_on_first_use keeps the certificate in the first "
                                    f"`trusted:` entry, and {directory} is not a directory",
                                    kind="certificate")
        return save(der, directory)
    subject = common_name(der)
    if known:
        listed = ", ".join(sorted(known))
        raise DeviceConfigError(
            f"server certificate of {endpoint} is not trusted: it presents SHA-1 thumbprint "
            f"{seen} ({subject}), the trust list has {listed}; if the server's certificate "
            f"was replaced on purpose, check it and accept it with `parkgate opcua cert "
            f"{endpoint} --accept DIR`", kind="certificate")
    raise DeviceConfigError(
        f"server certificate of {endpoint} is not trusted: SHA-1 thumbprint {seen} "
        f"({subject}); the trust list ({', '.join(trusted)}) is empty; check it and accept it "
        f"with `parkgate opcua cert {endpoint} --accept DIR`", kind="certificate")
