"""The ModemManager source: `mmcli -J` run as a subprocess, its JSON read as printed.

    mmcli -L -J                      {"modem-list": ["/org/freedesktop/ModemManager1/Modem/0"]}
    mmcli -m PATH -J                 {"modem": {"generic": {"state": ..., "access-technologies":
                                      [...], "signal-quality": {"value": "72", ...}, ...},
                                      "3gpp": {"operator-name": ..., "operator-code": ...,
                                      "registration-state": ...}, ...}}
    mmcli -m PATH --signal-get -J    {"modem": {"signal": {"lte": {"rsrp": "-95.00", ...},
                                      "5g": {"rsrp": ..., "rsrq": ..., "snr": ...},
                                      "refresh": {"rate": "10"}, ...}}}
    mmcli -m PATH --location-get -J  {"modem": {"location": {"3gpp": {"cid": ..., ...}}}}

mmcli prints every value as a string and `--` for "not known". Extended signal values stay
`--` until a refresh rate is set (`--signal-setup=N`), which this source does once per modem.
The modem index in the D-Bus path changes when a modem re-appears (reset, replug), so a modem
is best chosen by its IMEI (`equipment-identifier`) or sysfs device path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from drivers.modem.model import LTE, NSA, REGISTERED_STATES, SA, ModemStatus
from gateway.errors import DeviceConfigError, ProtocolError, TransientError

_MM_PATH = "/org/freedesktop/ModemManager1/Modem/"

# MMModemAccessTechnology nicknames -> our technology names
_TECH = {"gsm": "GSM", "gsm-compact": "GSM", "gprs": "GSM", "edge": "GSM",
         "umts": "WCDMA", "hsdpa": "WCDMA", "hsupa": "WCDMA", "hspa": "WCDMA",
         "hspa-plus": "WCDMA", "lte": LTE, "lte-cat-m": "LTE-M", "lte-nb-iot": "NB-IoT",
         "5gnr": SA}


def _obj(doc: Any, *keys: str) -> Mapping[str, Any]:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, Mapping) else None
    return doc if isinstance(doc, Mapping) else {}


def _str(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return None if value in ("", "--", "unknown") else value


def _float(value: Any) -> float | None:
    text = _str(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if abs(number) < 1e6 else None  # NaN and inf fail this too


def technology(access: Any) -> str | None:
    """ModemManager's access-technologies list -> LTE, NR5G-NSA, NR5G-SA, WCDMA, ..."""
    if isinstance(access, str):  # mmcli prints a lone value as a string in some versions
        access = [access]
    if not isinstance(access, list):
        return None
    techs = {t.strip().lower() for t in access if isinstance(t, str)}
    if "5gnr" in techs:
        return NSA if "lte" in techs else SA
    for name in ("lte", "lte-cat-m", "lte-nb-iot", "hspa-plus", "hspa", "hsupa", "hsdpa",
                 "umts", "edge", "gprs", "gsm", "gsm-compact"):
        if name in techs:
            return _TECH[name]
    return None


def modem_list(doc: Any) -> list[str]:
    """D-Bus paths from `mmcli -L -J`."""
    paths = doc.get("modem-list") if isinstance(doc, Mapping) else None
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def matches(selector: str, path: str, modem_doc: Any = None) -> bool:
    """Whether the modem at `path` (described by `mmcli -m -J`, if given) is `selector`."""
    if selector in (path, path.rsplit("/", 1)[-1]):
        return True
    generic = _obj(modem_doc, "modem", "generic")
    ids = (generic.get("equipment-identifier"), generic.get("device"),
           generic.get("device-identifier"), generic.get("primary-port"),
           _obj(modem_doc, "modem", "3gpp").get("imei"))
    return any(isinstance(v, str) and v == selector for v in ids)


def status_from_mmcli(modem_doc: Any, signal_doc: Any = None,
                      location_doc: Any = None) -> ModemStatus:
    """A `ModemStatus` from the JSON of `mmcli -m -J`, `--signal-get -J`, `--location-get -J`."""
    generic = _obj(modem_doc, "modem", "generic")
    gpp = _obj(modem_doc, "modem", "3gpp")
    tech = technology(generic.get("access-technologies"))
    registration = _str(gpp.get("registration-state"))
    quality = _float(_obj(generic, "signal-quality").get("value"))
    lte = _obj(signal_doc, "modem", "signal", "lte")
    nr = _obj(signal_doc, "modem", "signal", "5g")
    nr_rsrp, nr_rsrq, nr_sinr = _float(nr.get("rsrp")), _float(nr.get("rsrq")), \
        _float(nr.get("snr"))
    if tech == SA:
        rsrp, rsrq, sinr, rssi = nr_rsrp, nr_rsrq, nr_sinr, None
    else:
        rsrp, rsrq, sinr = _float(lte.get("rsrp")), _float(lte.get("rsrq")), \
            _float(lte.get("snr"))
        rssi = _float(lte.get("rssi"))
    if rssi is None:
        for other in ("umts", "gsm"):
            rssi = rssi if rssi is not None else _float(
                _obj(signal_doc, "modem", "signal", other).get("rssi"))
    cell = _obj(location_doc, "modem", "location", "3gpp")
    model = _str(generic.get("model"))
    return ModemStatus(
        source="modemmanager", model=model,
        state=_str(generic.get("state")), technology=tech,
        operator=_str(gpp.get("operator-name")), operator_code=_str(gpp.get("operator-code")),
        registration=registration,
        registered=(registration in REGISTERED_STATES) if registration else None,
        rsrp=rsrp, rsrq=rsrq, sinr=sinr, rssi=rssi,
        nr_rsrp=nr_rsrp, nr_rsrq=nr_rsrq, nr_sinr=nr_sinr,
        cell_id=(_str(cell.get("cid")) or "").upper() or None,
        signal_quality=int(quality) if quality is not None else None,
    )


def refresh_rate(signal_doc: Any) -> float | None:
    """The extended-signal refresh rate in seconds (0 or None: not set up)."""
    return _float(_obj(signal_doc, "modem", "signal", "refresh").get("rate"))


class MmcliSource:
    """Reads one modem through `mmcli`; `modem` picks it (None: the first one)."""

    def __init__(self, *, modem: str | None = None, mmcli: str = "mmcli",
                 timeout: float = 5.0, signal_refresh: float = 10.0) -> None:
        self.selector = modem
        self.mmcli = mmcli
        self.timeout = timeout
        self.signal_refresh = signal_refresh
        self.path: str | None = None
        self._signal_set_up: str | None = None

    async def run(self, *args: str, parse: bool = True) -> Any:
        """`mmcli ARGS` and its JSON output (its text with `parse=False`)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.mmcli, *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError as exc:
            raise DeviceConfigError(
                f"{self.mmcli} not found: install ModemManager or use source: at",
                kind="config") from exc
        except PermissionError as exc:
            raise DeviceConfigError(f"cannot run {self.mmcli}: {exc}", kind="config") from exc
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TransientError(f"mmcli {' '.join(args)}: no answer within "
                                 f"{self.timeout:g}s", kind="timeout") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            message = (err or out).decode(errors="replace").strip().splitlines()
            raise TransientError(f"mmcli {' '.join(args)}: "
                                 f"{message[0] if message else f'exit {proc.returncode}'}",
                                 kind="mmcli")
        if not parse:
            return out.decode(errors="replace")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise ProtocolError(f"mmcli {' '.join(args)} printed no JSON",
                                kind="garbage") from exc

    async def _resolve(self) -> tuple[str, Any]:
        """The D-Bus path of our modem and its `mmcli -m -J` document."""
        paths = modem_list(await self.run("-L", "-J"))
        if not paths:
            raise TransientError("ModemManager sees no modem", kind="no_modem")
        order = sorted(paths, key=lambda p: p != self.path)  # last one first
        for path in order:
            if self.selector is None or matches(self.selector, path):
                return path, await self.run("-m", path, "-J")
        for path in order:
            doc = await self.run("-m", path, "-J")
            if matches(self.selector or "", path, doc):
                return path, doc
        raise TransientError(f"no modem matches {self.selector!r} "
                             f"(ModemManager has modem {describe_list(paths)})", kind="no_modem")

    async def read(self) -> ModemStatus:
        """One look at the modem."""
        path, modem_doc = await self._resolve()
        self.path = path
        signal_doc: Any = None
        with contextlib.suppress(TransientError, ProtocolError):
            signal_doc = await self.run("-m", path, "--signal-get", "-J")
        if self.signal_refresh > 0 and self._signal_set_up != path and not refresh_rate(
                signal_doc):
            # ModemManager polls extended signal values only once a rate is set.
            with contextlib.suppress(TransientError, ProtocolError):
                rate = max(1, round(self.signal_refresh))
                await self.run("-m", path, f"--signal-setup={rate}", parse=False)
                self._signal_set_up = path
        location_doc: Any = None
        with contextlib.suppress(TransientError, ProtocolError):
            location_doc = await self.run("-m", path, "--location-get", "-J")
        return status_from_mmcli(modem_doc, signal_doc, location_doc)


def describe_list(paths: Sequence[str]) -> str:
    """Short modem names for messages: `0, 3`."""
    return ", ".join(p.removeprefix(_MM_PATH) for p in paths)
