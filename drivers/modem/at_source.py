"""The AT source: the queries a Quectel module answers, run through an `AtEngine`."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.modem import at_parse
from drivers.modem.at import AtCommandError, AtEngine
from drivers.modem.at_parse import LteSinr
from drivers.modem.model import ModemStatus
from gateway.errors import ProtocolError

QUERIES: tuple[tuple[str, str], ...] = (
    ("AT+CSQ", "+CSQ:"),
    ('AT+QENG="servingcell"', "+QENG:"),
    ("AT+COPS?", "+COPS:"),
    ("AT+CREG?", "+CREG:"),
    ("AT+CEREG?", "+CEREG:"),
    ("AT+C5GREG?", "+C5GREG:"),
    ("AT+QTEMP", "+QTEMP:"),
)
"""Command and the prefix of its response lines, in the order they are sent."""


@dataclass(frozen=True, slots=True)
class AtReading:
    """A status and the commands the modem refused (command -> ERROR / +CME ERROR: n)."""

    status: ModemStatus
    errors: dict[str, str] = field(default_factory=dict)


class AtSource:
    """Reads a Quectel module's link status over its AT port."""

    def __init__(self, engine: AtEngine, *, lte_sinr: LteSinr = "auto") -> None:
        self.engine = engine
        self.lte_sinr: LteSinr = lte_sinr
        self.model: str | None = None
        self._model_for_open = -1

    async def read(self) -> AtReading:
        """One round of queries; a refused command leaves its values out.

        Raises `TransientError` when the port is gone or a command times out, and
        `ProtocolError` when the modem refuses every query.
        """
        engine = self.engine
        await engine.ensure_open()
        if self._model_for_open != engine.opens:  # after a replug it may be another module
            try:
                self.model = at_parse.parse_model(await engine.command("AT+CGMM", body=True))
            except AtCommandError:
                self.model = None
            self._model_for_open = engine.opens
        answers: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        for command, prefix in QUERIES:
            try:
                answers[command] = await engine.command(command, prefix=prefix)
            except AtCommandError as exc:
                errors[command] = exc.result
        if not answers:
            raise ProtocolError(f"the modem on {engine.port} refused every query "
                                f"({', '.join(f'{c}: {r}' for c, r in errors.items())})",
                                kind="at_error")
        regs = [r for r in (at_parse.parse_registration(answers.get(f"AT+{d}?", ()), d)
                            for d in ("C5GREG", "CEREG", "CREG")) if r is not None]
        status = at_parse.build_status(
            model=self.model,
            csq=at_parse.parse_csq(answers.get("AT+CSQ", ())),
            cell=at_parse.parse_qeng(answers.get('AT+QENG="servingcell"', ())),
            cops=at_parse.parse_cops(answers.get("AT+COPS?", ())),
            registrations=regs,
            temperatures=at_parse.parse_qtemp(answers.get("AT+QTEMP", ())),
            lte_sinr=self.lte_sinr,
        )
        return AtReading(status, errors)
