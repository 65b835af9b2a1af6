"""Device answers that are not values: BACnet Error, Reject and Abort, classified.

Pure (no bacpypes3 import): the driver catches `AnswerError` without loading the stack, and
tests/bacnet/test_link.py checks the classification with a table of real PDUs.
"""

from __future__ import annotations

from gateway.errors import DeviceError


class AnswerError(DeviceError):
    """The device answered with a BACnet Error, Reject or Abort."""

    kind = "bacnet-error"

    def __init__(self, message: str, *, pdu: str, error_class: str | None, code: str,
                 number: int) -> None:
        super().__init__(message)
        self.pdu = pdu
        self.error_class = error_class
        self.code = code
        self.number = number

    @property
    def unknown_object(self) -> bool:
        """The object is not (or no longer) in the device."""
        return self.code in ("unknown-object", "unknownObject")

    @property
    def unsupported_service(self) -> bool:
        """The device does not implement the service asked (RPM, SubscribeCOV)."""
        return self.code in (
            "unrecognized-service", "unrecognizedService", "service-request-denied",
            "serviceRequestDenied", "optional-functionality-not-supported",
            "optionalFunctionalityNotSupported", "not-cov-property", "notCovProperty",
            "cov-subscription-failed", "covSubscriptionFailed")

    @property
    def too_big(self) -> bool:
        """The answer would not fit the device's buffers: ask for less at once."""
        return self.code in ("segmentation-not-supported", "segmentationNotSupported",
                             "buffer-overflow", "bufferOverflow", "abort-apdu-too-long",
                             "apduTooLong")


def _name(value: object) -> str:
    text = str(value)
    return text if text and text != "None" else repr(value)


def answer_error(exc: object) -> AnswerError:
    """Our error for a bacpypes3 Error/Reject/Abort PDU or an RPM element's error."""
    error_class = getattr(exc, "errorClass", None)
    error_code = getattr(exc, "errorCode", None)
    if error_code is not None:
        code = _name(error_code)
        klass = _name(error_class) if error_class is not None else None
        number = int(error_code) if isinstance(error_code, int) else -1
        pdu = "error"
        text = f"{klass}: {code}" if klass else code
    else:
        reason = getattr(exc, "apduAbortRejectReason", None)
        pdu = "reject" if type(exc).__name__.startswith("Reject") else "abort"
        code = _name(reason)
        klass = None
        number = int(reason) if isinstance(reason, int) else -1
        text = f"{pdu}: {code}"
    return AnswerError(f"device answered {text}", pdu=pdu, error_class=klass, code=code,
                       number=number)
