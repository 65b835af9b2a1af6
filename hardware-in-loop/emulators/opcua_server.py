"""An OPC UA server for tests and benchmarks, built on asyncua's server.

Script (the benchmark's server, in its own process):
    python hardware-in-loop/emulators/opcua_server.py --port 4840 --nodes 100 --change 1s

Tests:
    `PlantServer` serves, under Objects/2:Plant, one variable of every scalar type
    (`ns=2;s=Plant.<Type>`, writable), a variable with a bad status (`Plant.Broken`), an
    uncertain one (`Plant.Shaky`, with a source timestamp), and `Bench.<i>`
    Doubles; optionally Basic256Sha256 endpoints with a certificate and a user manager.
    It stops and starts again on the same port (a server restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

URI = "urn:parkgate:test:plant"
SCALARS: list[tuple[str, Any, ua.VariantType]] = [
    ("Boolean", True, ua.VariantType.Boolean),
    ("SByte", -5, ua.VariantType.SByte),
    ("Byte", 200, ua.VariantType.Byte),
    ("Int16", -1234, ua.VariantType.Int16),
    ("UInt16", 54321, ua.VariantType.UInt16),
    ("Int32", -123456, ua.VariantType.Int32),
    ("UInt32", 4_000_000_000, ua.VariantType.UInt32),
    ("Int64", -(2**40), ua.VariantType.Int64),
    ("UInt64", 2**63 + 5, ua.VariantType.UInt64),
    ("Float", 1.2, ua.VariantType.Float),
    ("Double", 2.5, ua.VariantType.Double),
    ("String", "läuft", ua.VariantType.String),
    ("DateTime", datetime(2026, 11, 30, 8, 0, 0, 123000, tzinfo=UTC), ua.VariantType.DateTime),
    ("ByteString", b"\x01\xab", ua.VariantType.ByteString),
]
SOURCE_TS = datetime(2026, 11, 30, 7, 59, 0, tzinfo=UTC)


class Users:
    """Accepts anonymous users, any user certificate, and `operator` with password `secret`."""

    def get_user(self, iserver: Any, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> User | None:
        if username is None:  # anonymous, or an X.509 user (the channel's cert is passed too)
            return User(role=UserRole.User)
        if username == "operator" and password == "secret":
            return User(role=UserRole.User, name=username)
        return None


class PlantServer:
    """An asyncua server with the plant's variables, started and stopped by tests."""

    def __init__(self, port: int, *, cert: Path | None = None, key: Path | None = None,
                 bench_nodes: int = 0, secure_only: bool = False) -> None:
        self.port = port
        self.cert = cert
        self.key = key
        self.bench_nodes = bench_nodes
        self.secure_only = secure_only
        self.server: Server | None = None
        self.idx = 2
        self.vars: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    async def start(self) -> PlantServer:
        server = Server(user_manager=Users())  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("parkgate test plant")
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                    ua.SecurityPolicyType.Basic256Sha256_Sign]
        if self.cert is not None and self.key is not None:
            await server.load_certificate(str(self.cert))
            await server.load_private_key(str(self.key))
            server.set_security_policy(
                policies if self.secure_only else [ua.SecurityPolicyType.NoSecurity, *policies])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken,
                                    ua.X509IdentityToken])
        self.idx = await server.register_namespace(URI)
        idx = self.idx
        plant = await server.nodes.objects.add_object(ua.NodeId("Plant", idx),
                                                      ua.QualifiedName("Plant", idx))
        for name, value, vtype in SCALARS:
            var = await plant.add_variable(ua.NodeId(f"Plant.{name}", idx),
                                           ua.QualifiedName(name, idx), ua.Variant(value, vtype))
            await var.set_writable()
            self.vars[name] = var
        broken = await plant.add_variable(ua.NodeId("Plant.Broken", idx),
                                          ua.QualifiedName("Broken", idx), 1.0)
        await broken.write_value(ua.DataValue(
            ua.Variant(1.0, ua.VariantType.Double),
            StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure)))
        shaky = await plant.add_variable(ua.NodeId("Plant.Shaky", idx),
                                         ua.QualifiedName("Shaky", idx), 3.0)
        await shaky.write_value(ua.DataValue(
            ua.Variant(3.0, ua.VariantType.Double),
            StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
            SourceTimestamp=SOURCE_TS, ServerTimestamp=SOURCE_TS))
        self.vars["Broken"], self.vars["Shaky"] = broken, shaky
        bench = await server.nodes.objects.add_object(ua.NodeId("Bench", idx),
                                                      ua.QualifiedName("Bench", idx))
        for i in range(self.bench_nodes):
            self.vars[f"Bench.{i}"] = await bench.add_variable(
                ua.NodeId(f"Bench.{i}", idx), ua.QualifiedName(f"N{i}", idx), float(i))
        await server.start()
        self.server = server
        return self

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    async def restart(self, *, cert: Path | None = None, key: Path | None = None) -> None:
        """Stop, then start on the same port (with another certificate if given)."""
        await self.stop()
        if cert is not None:
            self.cert, self.key = cert, key
        await self.start()

    async def set(self, name: str, value: Any, vtype: ua.VariantType) -> None:
        await self.vars[name].write_value(ua.Variant(value, vtype))

    async def get(self, name: str) -> Any:
        return await self.vars[name].read_value()

    async def add(self, name: str, node_id: str, value: Any, vtype: ua.VariantType) -> None:
        """A variable `2:<name>` under Plant with the given NodeId (re-creating one)."""
        assert self.server is not None
        plant = self.server.get_node(ua.NodeId("Plant", self.idx))
        self.vars[name] = await plant.add_variable(ua.NodeId.from_string(node_id),
                                                   ua.QualifiedName(name, self.idx),
                                                   ua.Variant(value, vtype))

    async def delete(self, name: str) -> None:
        assert self.server is not None
        await self.server.delete_nodes([self.vars.pop(name)])


async def _serve(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    plant = await PlantServer(args.port, bench_nodes=args.nodes).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving {plant.url} with {args.nodes} bench nodes", flush=True)
    tick = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.change)
        tick += 1
        for i in range(args.nodes):  # every value changes every period
            await plant.vars[f"Bench.{i}"].write_value(float(i + tick))
    await plant.stop()


def main() -> None:
    from gateway.units import parse_duration  # noqa: PLC0415 - the script's own path set-up

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=4840)
    p.add_argument("--nodes", type=int, default=100, help="Bench.<i> Double variables")
    p.add_argument("--change", type=parse_duration, default=1.0,
                   help="every bench value changes this often (default 1s)")
    asyncio.run(_serve(p.parse_args()))


if __name__ == "__main__":
    main()
