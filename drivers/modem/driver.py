"""`driver: modem`: the 5G/LTE link of the gateway's modem, as readings and gauges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

from prometheus_client import Gauge
from pydantic import Field, model_validator

from drivers.modem.at import AtEngine
from drivers.modem.at_parse import LteSinr
from drivers.modem.at_source import AtSource
from drivers.modem.mmcli import MmcliSource
from drivers.modem.model import SA, ModemStatus
from gateway.driver import DeviceOptions, DriverContext, PollingDriver
from gateway.errors import DeviceConfigError, DeviceError
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.units import Duration


class ModemOptions(DeviceOptions):
    """Options of `driver: modem`."""

    driver: Literal["modem"] = "modem"
    interval: Duration = Field(default=30.0, ge=1.0, description="Time between looks.")
    timeout: Duration = Field(default=15.0, gt=0, description="Longest one look may take.")
    source: Literal["modemmanager", "at"] = Field(
        default="modemmanager",
        description="modemmanager: ask ModemManager (mmcli); at: talk to the modem's AT port.")
    port: str | None = Field(
        default=None, description="AT command port (source: at), such as /dev/ttyUSB2.")
    baudrate: int = Field(default=115200, gt=0, description="AT port speed (source: at).")
    command_timeout: Duration = Field(default=2.0, gt=0,
                                      description="Longest one AT command may take.")
    lte_sinr: LteSinr = Field(
        default="auto",
        description="How the module prints LTE SINR: auto (by model), db, 2x-20 (RM5xx), "
                    "x/5-20 (EC2x, EG, BG9x).")
    modem: str | None = Field(
        default=None,
        description="ModemManager: which modem (IMEI, sysfs device, index or D-Bus path); "
                    "the first one if unset.")
    mmcli: str = Field(default="mmcli", description="The mmcli program.")
    signal_refresh: Duration = Field(
        default=10.0, ge=0,
        description="ModemManager: extended signal refresh rate to set up (0: leave alone).")

    @model_validator(mode="after")
    def _source_keys(self) -> Self:
        if self.source == "at" and not self.port:
            raise ValueError("source: at needs port: the modem's AT command port, "
                             "such as /dev/ttyUSB2")
        if self.source == "modemmanager" and self.port:
            raise ValueError("port: is for source: at; add source: at or remove port:")
        return self


class _Gauges:
    """The modem's Prometheus gauges for one device; absent values remove their series."""

    def __init__(self, metrics: Metrics, device: str) -> None:
        g = metrics.gauge
        self.device = device
        self.rsrp = g("modem_signal_rsrp_dbm", "Reference signal received power", ["device", "rat"])
        self.rsrq = g("modem_signal_rsrq_db", "Reference signal received quality",
                      ["device", "rat"])
        self.sinr = g("modem_signal_sinr_db", "Signal to interference plus noise ratio",
                      ["device", "rat"])
        self.rssi = g("modem_signal_rssi_dbm", "Received signal strength", ["device"])
        self.temperature = g("modem_temperature_celsius", "Hottest modem sensor", ["device"])
        self.registered = g("modem_registered", "1 while registered on a network", ["device"])
        self.quality = g("modem_signal_quality_percent", "ModemManager signal quality",
                         ["device"])
        self.info = g("modem_info", "1 for the modem's current technology, operator and cell",
                      ["device", "technology", "operator", "band", "cell_id"])
        self._info: tuple[str, ...] | None = None

    def update(self, s: ModemStatus) -> None:
        """Set every gauge from one status."""
        dev = self.device
        lte = (None, None, None) if s.technology == SA else (s.rsrp, s.rsrq, s.sinr)
        nr = (s.nr_rsrp, s.nr_rsrq, s.nr_sinr)
        for gauge, lte_value, nr_value in zip((self.rsrp, self.rsrq, self.sinr), lte, nr,
                                              strict=True):
            _put(gauge, (dev, "lte"), lte_value)
            _put(gauge, (dev, "nr"), nr_value)
        _put(self.rssi, (dev,), s.rssi)
        _put(self.temperature, (dev,), s.temperature)
        _put(self.registered, (dev,), None if s.registered is None else float(s.registered))
        _put(self.quality, (dev,), s.signal_quality)
        info = (dev, s.technology or "", s.operator or "", s.band or "", s.cell_id or "")
        if info != self._info:
            if self._info is not None:
                self.info.remove(*self._info)
            self.info.labels(*info).set(1)
            self._info = info

    def clear(self) -> None:
        """Remove this device's series (it is gone or its values are unknown)."""
        dev = self.device
        for gauge in (self.rsrp, self.rsrq, self.sinr):
            gauge.remove(dev, "lte")
            gauge.remove(dev, "nr")
        for gauge in (self.rssi, self.temperature, self.registered, self.quality):
            gauge.remove(dev)
        if self._info is not None:
            self.info.remove(*self._info)
            self._info = None


def _put(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    if value is None:
        gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)


class ModemDriver(PollingDriver):
    """Reads the modem's link: state, technology, operator, registration, signal, cell, band,
    temperature; from ModemManager or from a Quectel module's AT port."""

    Options = ModemOptions

    def __init__(self, options: ModemOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self._gauges = _Gauges(ctx.metrics, ctx.device)
        self._at_errors = ctx.metrics.counter(
            "modem_at_errors", "AT commands the modem answered with ERROR", ["device", "command"])
        self._key = ("serial", options.port)
        self._at: AtSource | None = None
        self._acquired = False
        self._mm: MmcliSource | None = None

    async def open(self) -> None:
        """Take the AT port (shared through the resource pool) or set up mmcli."""
        o = self.o
        if o.source == "modemmanager":
            self._mm = MmcliSource(modem=o.modem, mmcli=o.mmcli, timeout=o.timeout / 3,
                                   signal_refresh=o.signal_refresh)
            return
        assert o.port is not None
        port, baudrate, timeout, log = o.port, o.baudrate, o.command_timeout, self.ctx.log
        engine: object = await self.ctx.resources.acquire(
            self._key, lambda: AtEngine(port, baudrate=baudrate, timeout=timeout, log=log))
        self._acquired = True
        if not isinstance(engine, AtEngine):  # the same key as the serial driver's ports
            raise DeviceConfigError(f"{port} is already used by a device of another driver; "
                                    "an AT port cannot be shared with it", kind="config")
        if engine.baudrate != baudrate:
            raise DeviceConfigError(f"{port} is shared with another modem device at "
                                    f"{engine.baudrate} baud, this one asks for {baudrate}",
                                    kind="config")
        self._at = AtSource(engine, lte_sinr=o.lte_sinr)
        await engine.ensure_open()

    async def poll(self) -> Sequence[Reading]:
        """One look at the modem."""
        try:
            status = await self.read()
        except DeviceError:
            self._gauges.clear()
            raise
        self._gauges.update(status)
        return status.readings(self.ctx.device, self.ctx.clock())

    async def read(self) -> ModemStatus:
        """The modem's status from the configured source."""
        if self._mm is not None:
            return await self._mm.read()
        if self._at is None:
            raise DeviceError("modem driver used before open()", kind="not_open")
        result = await self._at.read()
        for command, answer in result.errors.items():
            self._at_errors.labels(self.ctx.device, command).inc()
            self.ctx.log.debug("modem.at_refused", command=command, result=answer)
        return result.status

    async def close(self) -> None:
        """Give the AT port back; drop this device's gauges."""
        self._gauges.clear()
        self._at = None
        if self._acquired:
            self._acquired = False
            await self.ctx.resources.release(self._key)
        self._mm = None
