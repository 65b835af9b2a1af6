"""Error taxonomy: one root, split by what the caller should do about it."""

from __future__ import annotations


class ParkgateError(Exception):
    """Root of every error parkgate raises on purpose."""


class ConfigError(ParkgateError):
    """The configuration is wrong; retrying will not help until a human changes it."""


class FatalError(ParkgateError):
    """The agent cannot go on (for example the buffer directory is not writable)."""


class DeviceError(ParkgateError):
    """A device-level failure, carrying the device name and an error kind for metrics.

    `kind` becomes the `kind` label of `parkgate_poll_errors_total`; keep it a short,
    low-cardinality word such as `timeout`, `exception`, `crc`, `garbage`, `disconnected`.
    """

    kind: str = "error"

    def __init__(self, message: str, *, device: str | None = None, kind: str | None = None,
                 address: str | int | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.address = address
        if kind is not None:
            self.kind = kind


class TransientError(DeviceError):
    """Worth retrying: link down, timeout, busy device, garbage on the line."""

    kind = "transient"


class DeviceConfigError(DeviceError):
    """The device rejects what the config asks for (for example an illegal address).

    Retried with the maximum backoff: a config reload or a firmware change may fix it.
    """

    kind = "config"


class ProtocolError(TransientError):
    """The device answered something that does not parse (bad CRC, bad checksum, noise)."""

    kind = "protocol"


class WriteRefused(ParkgateError):
    """A command the agent will not carry out (not writable, out of limits, not encodable).

    Becomes a reply with status `refused`; the device is never touched.
    """


class DeviceRejected(DeviceError):
    """The device answered a write or command with a refusal (a Modbus exception, a NAK).

    Becomes a reply with status `failed`; `code` is the device's own code where it has one
    (the Modbus exception code, a DL/T 645 error byte).
    """

    kind = "rejected"

    def __init__(self, message: str, *, code: int | None = None, device: str | None = None,
                 address: str | int | None = None) -> None:
        super().__init__(message, device=device, address=address)
        self.code = code


class VerifyFailed(DeviceError):
    """A write was accepted but the value read back differs: status `failed`."""

    kind = "verify"
