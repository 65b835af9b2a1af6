"""The agent: wires config, buffer, uplink, supervisor and HTTP server, in one TaskGroup.

Start-up order: config -> logging -> buffer open -> HTTP server bound -> READY=1 -> uplink
and devices. Shutdown is an order, not a sleep: stop devices (drivers closed), commit what
is pending, keep publishing for `agent.shutdown_grace`, stop the uplink (retained `offline`
status), close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

from gateway import __version__, logs
from gateway.buffer import Buffer
from gateway.config import ConfigProblems, LoadedConfig, load_config
from gateway.driver import DriverInfo, discover_drivers
from gateway.health import Heartbeat, HttpServer
from gateway.metrics import Metrics
from gateway.sdnotify import SystemdNotifier, watchdog_loop
from gateway.supervisor import DeviceState, Supervisor, state_document
from gateway.tasks import cancel_and_wait
from gateway.uplink import Uplink, UplinkState, dialects

if TYPE_CHECKING:
    from gateway.commands.runtime import CommandRuntime


@dataclass(slots=True)
class AgentHooks:
    """Optional callbacks, for `parkgate demo` and tests running the agent in-process."""

    on_ready: Callable[[Agent], None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Agent:
    """One running gateway."""

    def __init__(self, loaded: LoadedConfig, *, drivers: Mapping[str, DriverInfo] | None = None,
                 log: FilteringBoundLogger | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.drivers = drivers if drivers is not None else discover_drivers()
        self.metrics = Metrics()
        self.log = log or logs.get_logger()
        cfg = self.config
        self.buffer = Buffer(cfg.buffer, chunk_max=cfg.uplink.mqtt.batch.max_readings,
                             metrics=self.metrics, log=self.log.bind(component="buffer"))
        commands = cfg.commands if cfg.commands.enabled else None
        self.uplink = Uplink(cfg.uplink.mqtt, cfg.gateway, self.buffer, self.metrics, self.log,
                             drops=self.buffer, state_path=cfg.buffer.path,
                             dialect=dialects.load(cfg.uplink.mqtt, cfg.gateway,
                                                   cfg.buffer.path, commands),
                             session_expiry=round(commands.session_expiry) if commands else 0)
        self.supervisor = Supervisor(self.drivers, self.buffer.add, self.metrics,
                                     self.log.bind(component="supervisor"),
                                     room=self.buffer.wait_for_room)
        if cfg.uplink.mqtt.publishes_device_state:
            self.supervisor.on_state = self._device_state
        self.commands: CommandRuntime | None = None
        if commands is not None:
            from gateway.commands.link import CommandLink  # noqa: PLC0415 - only when on
            from gateway.commands.runtime import CommandRuntime  # noqa: PLC0415

            log = self.log.bind(component="commands")
            self.commands = CommandRuntime(commands, cfg.gateway.id, self.supervisor,
                                           sink=self.buffer.add, metrics=self.metrics,
                                           log=log, buffer_path=cfg.buffer.path)
            self.uplink.set_inbound(CommandLink(self.commands, self.uplink, log).on_message)
        self.heartbeat = Heartbeat(self.metrics)
        self.http: HttpServer | None = None
        self.notifier = SystemdNotifier.from_env()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.uplink.on_state = self._uplink_state

    # -- readiness and status ----------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        """/readyz: ready once config is loaded and the buffer is open.

        The uplink is reported but does not make the agent unready: buffering through a
        broker outage is the agent doing its job, and restarting it would not help.
        """
        up = self.uplink.state
        return self.buffer.is_open, {
            "buffer_open": self.buffer.is_open,
            "uplink_connected": up.connected, "broker": up.broker,
            "uplink_last_error": up.last_error,
            "devices": len(self.supervisor.devices),
        }

    def _device_state(self, device: str, state: DeviceState) -> None:
        """Each device's state, retained upstream when it changes (and after reconnects)."""
        self.uplink.set_retained_state(f"device:{device}", self.uplink.dialect.device_state(
            device, state_document(state)))

    def _uplink_state(self, state: UplinkState) -> None:
        if state.connected:
            self.notifier.status(f"publishing to {state.broker}; "
                                 f"{len(self.supervisor.devices)} devices")
        else:
            self.notifier.status(f"buffering: uplink down ({state.last_error or 'connecting'})")

    def request_stop(self) -> None:
        """Begin an orderly shutdown."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the config file (SIGHUP)."""
        self._reload.set()

    # -- main --------------------------------------------------------------------------------
    async def run(self, hooks: AgentHooks | None = None) -> int:
        """Run until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.request_stop),
                             (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self.request_reload)):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
        self.log.info("parkgate starting", version=__version__, gateway=self.config.gateway.id,
                      config=str(self.loaded.path), devices=len(self.config.devices))
        self.notifier.status("opening buffer (integrity check)")
        # a large buffer's integrity check can outlast TimeoutStartSec on an SD card
        self.notifier.extend_timeout(120)
        await self.buffer.open()
        if self.config.metrics.listen:
            self.http = HttpServer(self.config.metrics.listen, self.metrics, self.heartbeat,
                                   self.ready, self.log.bind(component="http"))
            await self.http.start()
        try:
            await self._run_tasks(hooks)
        finally:
            if self.buffer.is_open:  # also when a task crashed: commit what is in memory
                await self.buffer.close()
        return 0

    async def _run_tasks(self, hooks: AgentHooks | None) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = {
                "buffer.commit": tg.create_task(self.buffer.run(), name="buffer.commit"),
                "heartbeat": tg.create_task(self.heartbeat.run(), name="heartbeat"),
                "gauges": tg.create_task(self._gauges(), name="gauges"),
                "watchdog": tg.create_task(watchdog_loop(self.notifier), name="watchdog"),
            }
            if self.http:
                tasks["http"] = tg.create_task(self.http.serve(), name="http")
            if self.commands is not None:  # the ledger is open before requests arrive
                await self.commands.start([d.name for d in self.config.devices])
            uplink = tg.create_task(self.uplink.run(), name="uplink")
            self.supervisor.bind(tg)
            await self.supervisor.apply(self.config.devices)
            self.notifier.ready()
            self.notifier.status(f"running {len(self.supervisor.devices)} devices")
            if hooks and hooks.on_ready:
                hooks.on_ready(self)
            while not self._stop.is_set():
                waits = [asyncio.ensure_future(self._stop.wait()),
                         asyncio.ensure_future(self._reload.wait())]
                if hooks:
                    waits.append(asyncio.ensure_future(hooks.stop.wait()))
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                if hooks and hooks.stop.is_set():
                    self._stop.set()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self.reload()
            await self._shutdown(uplink, tasks)

    async def _shutdown(self, uplink: asyncio.Task[None],
                        tasks: dict[str, asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        self.notifier.status("stopping: closing devices")
        if self.commands is not None:  # commands under way end while their devices run
            await self.commands.close(grace=min(5.0, self.config.agent.shutdown_grace))
        self.log.info("stopping: closing devices")
        await self.supervisor.stop_all()
        await self.buffer.flush()
        grace = self.config.agent.shutdown_grace
        self.notifier.status(f"stopping: publishing what is buffered (up to {grace:g}s)")
        drained = await self.uplink.drain(grace)
        stats = await self.buffer.stats()
        await cancel_and_wait(uplink, self.log)
        for name in ("gauges", "http", "watchdog", "heartbeat", "buffer.commit"):
            if name in tasks:
                await cancel_and_wait(tasks[name], self.log)
        await self.buffer.close()
        self.log.info("parkgate stopped", drained=drained, buffered_readings=stats.readings,
                      next_seq=stats.next_seq)

    async def _gauges(self) -> None:
        while True:
            await self.buffer.refresh_gauges()
            await asyncio.sleep(1.0)

    async def reload(self) -> bool:
        """SIGHUP: validate the file again; apply device changes, or keep the old config."""
        path = self.loaded.path
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load_config, path, self.drivers)
        except ConfigProblems as exc:
            self.metrics.config_reload_failures.inc()
            for problem in exc.problems:
                self.log.error("config reload rejected; keeping the running config",
                               problem=str(problem))
            self.notifier.ready()
            return False
        except Exception as exc:  # noqa: BLE001 - a reload must never take the agent down
            self.metrics.config_reload_failures.inc()
            self.log.error("config reload failed; keeping the running config",
                           error=f"{type(exc).__name__}: {exc}", config=str(path))
            self.notifier.ready()
            return False
        old = self.config
        ignored = [section for section in ("gateway", "buffer", "uplink", "metrics", "agent",
                                                "commands")
                   if getattr(new.config, section) != getattr(old, section)]
        secrets = self.loaded.secrets | new.secrets
        logs.add_secrets(secrets)  # whether or not `logging:` changed
        if new.config.logging != old.logging:
            logs.configure(new.config.logging.level, new.config.logging.format, secrets)
        if ignored:
            self.log.warning("config reload: these sections changed and need a restart "
                             "(systemctl restart parkgate); keeping their running values",
                             sections=ignored)
        changes = await self.supervisor.apply(new.config.devices)
        if self.config.uplink.mqtt.publishes_device_state:
            for name in changes["stopped"]:  # an empty state: the device is gone
                self.uplink.set_retained_state(f"device:{name}",
                                               self.uplink.dialect.device_state(name, {}))
        self.config = old.model_copy(update={"devices": new.config.devices,
                                             "logging": new.config.logging})
        self.loaded = LoadedConfig(self.config, path, secrets)
        self.metrics.config_reloads.inc()
        self.log.info("config reloaded", **changes)
        self.notifier.ready()
        self.notifier.status(f"running {len(self.supervisor.devices)} devices (reloaded)")
        return True


GC_YOUNG = 20_000
"""Container allocations (net) between young collections, for a running agent (default 700).

Readings are tuples the collector tracks (a NamedTuple is never untracked like a plain
tuple of atoms) and live until their commit, 0.15-1 s, so with the default the pending
readings kept triggering collections that walked them and promoted them into older
generations, walked again: at 100 meters x 100 registers 3-4 collections a second and a
full one (30 ms) about every 20 s, 7 % of the event loop's CPU (gc callbacks timed with
thread CPU time, bench/modbus.py); with 20,000 none in steady state. Garbage cycles (rare
here) wait a little longer to be freed."""


def run_file(path: Path, *, debug: bool = False) -> int:
    """`parkgate run -c FILE`."""
    drivers = discover_drivers()
    loaded = load_config(path, drivers)
    level = "debug" if debug else loaded.config.logging.level
    logs.configure(level, loaded.config.logging.format, loaded.secrets)
    agent = Agent(loaded, drivers=drivers)
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    return asyncio.run(agent.run())
