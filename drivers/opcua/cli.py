"""`parkgate opcua browse|read|cert`: commissioning OPC UA servers (JSON output)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ParkgateError
from gateway.units import parse_duration

if TYPE_CHECKING:
    from asyncua import Client, ua


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate opcua ...`."""
    p = sub.add_parser("opcua", help="OPC UA servers: browse, read, show and accept "
                                     "certificates")
    cmds = p.add_subparsers(dest="opcua_command", metavar="SUBCOMMAND", required=True)

    b = cmds.add_parser("browse", help="list the children of a node (JSON)",
                        description="Lists the children of NODE (default: the Objects "
                                    "folder) with their NodeIds, browse paths, and for "
                                    "variables their type and current value.")
    b.add_argument("url", metavar="URL", help="endpoint, e.g. opc.tcp://10.0.0.5:4840")
    b.add_argument("node", metavar="NODE", nargs="?", default=None,
                   help="NodeId (ns=2;s=Line1) or browse path below Objects (2:Line1)")
    _link_args(b)
    b.set_defaults(handler=browse_command)

    r = cmds.add_parser("read", help="read variables once (JSON)",
                        description="Reads each NODE (NodeId or browse path below Objects) in "
                                    "one Read call and prints value, type, status, quality "
                                    "and timestamps.")
    r.add_argument("url", metavar="URL")
    r.add_argument("nodes", metavar="NODE", nargs="+")
    _link_args(r)
    r.set_defaults(handler=read_command)

    c = cmds.add_parser("cert", help="show the server's certificate; --accept trusts it",
                        description="Asks the server for its endpoints (without security) "
                                    "and prints each certificate with its SHA-1 and SHA-256 "
                                    "thumbprints. Compare them with the server's own display "
                                    "before accepting.")
    c.add_argument("url", metavar="URL")
    c.add_argument("--accept", metavar="DIR", type=Path, help=(
        "keep the certificate in DIR (a device's `security.trusted` directory)"))
    c.add_argument("--thumbprint", metavar="SHA1", help=(
        "with --accept: the thumbprint you checked; refused if the server sends another"))
    c.add_argument("--timeout", type=parse_duration, default=5.0, metavar="DURATION")
    c.set_defaults(handler=cert_command)


def _link_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=("None", "Basic256Sha256"), default="None")
    p.add_argument("--mode", choices=("Sign", "SignAndEncrypt"), default=None)
    p.add_argument("--cert", metavar="FILE", help="this client's certificate (with --policy)")
    p.add_argument("--key", metavar="FILE", help="its private key")
    p.add_argument("--trust", metavar="PATH", action="append", default=[],
                   help="trusted server certificate file or directory (repeatable)")
    p.add_argument("--username", metavar="NAME")
    p.add_argument("--password-file", metavar="FILE", type=Path,
                   help="file holding the password (never on the command line)")
    p.add_argument("--user-cert", metavar="FILE", help="user certificate (X.509 login)")
    p.add_argument("--user-key", metavar="FILE", help="its private key")
    p.add_argument("--timeout", type=parse_duration, default=5.0, metavar="DURATION",
                   help="longest wait for one answer (default 5s)")


def _quiet(args: argparse.Namespace) -> None:
    """Needs asyncua; its own warnings (a channel closed twice) are noise next to our line."""
    try:
        import asyncua  # noqa: F401, PLC0415 - only to say what is missing
    except ImportError:
        raise ParkgateError("parkgate opcua needs asyncua: pip install 'parkgate[opcua]'") \
            from None
    if not args.debug:
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError  # noqa: PLC0415 - only for this command

    from .options import AnonymousAuth, CertificateAuth, OpcUaOptions, Security, UserAuth  # noqa: PLC0415
    from .session import Settings  # noqa: PLC0415

    try:
        OpcUaOptions.model_validate({"name": "cli", "endpoint": args.url,
                                     "nodes": [{"name": "x", "node": "i=85"}]})
        security = Security(policy=args.policy, mode=args.mode, certificate=args.cert,
                            private_key=args.key, trusted=args.trust)
        auth: Any = AnonymousAuth(type="anonymous")
        if args.username:
            if args.password_file is None:
                raise ParkgateError("--username needs --password-file FILE")
            password = args.password_file.read_text().rstrip("\r\n")
            auth = UserAuth(type="username", username=args.username, password=password)
        elif args.user_cert or args.user_key:
            auth = CertificateAuth(type="certificate", certificate=args.user_cert or "",
                                   private_key=args.user_key or "")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ParkgateError(str(first["msg"]).removeprefix("Value error, ")) from None
    except OSError as exc:
        raise ParkgateError(f"--password-file: {exc}") from None
    return Settings(args.url, security, auth, args.timeout, keepalive=60.0)


def _node_id(text: str) -> tuple[ua.NodeId | None, str | None]:
    from asyncua import ua  # noqa: PLC0415

    from .options import NODE_ID, split_path  # noqa: PLC0415

    if NODE_ID.match(text):
        return ua.NodeId.from_string(text), None
    try:
        return None, "/" + "/".join(split_path(text))
    except ValueError as exc:
        raise ParkgateError(str(exc)) from None


async def _resolve(client: Client, texts: list[str]) -> list[ua.NodeId]:
    from asyncua import ua  # noqa: PLC0415

    from .convert import status_name  # noqa: PLC0415

    parsed = [_node_id(t) for t in texts]
    paths = [p for _, p in parsed if p is not None]
    found = iter(await client.translate_browsepaths(
        ua.NodeId.from_string("i=85"), paths) if paths else [])
    out: list[ua.NodeId] = []
    for text, (given, _path) in zip(texts, parsed, strict=True):
        if given is not None:
            out.append(given)
            continue
        res = next(found)
        if not res.StatusCode.is_good() or not res.Targets:
            raise ParkgateError(f"{text}: browse path not found "
                                f"({status_name(int(res.StatusCode.value))})")
        t = res.Targets[0].TargetId
        out.append(ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType))
    return out


def _value_doc(dv: ua.DataValue) -> dict[str, Any]:
    from .convert import convert, epoch_ms, quality, status_name  # noqa: PLC0415

    code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
    value, usable = convert(dv.Value)
    return {"value": value if usable else None,
            "type": dv.Value.VariantType.name if dv.Value is not None else "Null",
            "status": status_name(code), "quality": quality(code) if usable else "bad",
            "source_timestamp": epoch_ms(dv.SourceTimestamp),
            "server_timestamp": epoch_ms(dv.ServerTimestamp)}


async def _with_client(args: argparse.Namespace, what: str, work: Any) -> dict[str, Any]:
    from gateway.errors import DeviceError  # noqa: PLC0415

    from .session import classify, connect, disconnect  # noqa: PLC0415

    settings = _settings(args)
    try:
        client = await connect(settings)
    except DeviceError as exc:
        raise ParkgateError(str(exc)) from None
    try:
        doc: dict[str, Any] = await work(client)
        return doc
    except ParkgateError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for the engineer
        raise ParkgateError(str(classify(exc, f"{args.url}: {what}"))) from None
    finally:
        await disconnect(client)


async def _read(args: argparse.Namespace) -> dict[str, Any]:
    from asyncua import ua  # noqa: PLC0415

    async def work(client: Client) -> dict[str, Any]:
        ids = await _resolve(client, args.nodes)
        params = ua.ReadParameters(
            NodesToRead=[ua.ReadValueId(NodeId=i, AttributeId=ua.AttributeIds.Value)
                         for i in ids], TimestampsToReturn=ua.TimestampsToReturn.Both)
        results = await client.uaclient.read(params)
        return {"endpoint": args.url, "values": [
            {"node": text, "node_id": i.to_string(), **_value_doc(dv)}
            for text, i, dv in zip(args.nodes, ids, results, strict=True)]}

    return await _with_client(args, "Read", work)


async def _browse(args: argparse.Namespace) -> dict[str, Any]:
    from asyncua import ua  # noqa: PLC0415

    async def work(client: Client) -> dict[str, Any]:
        (start,) = await _resolve(client, [args.node]) if args.node else \
            [ua.NodeId.from_string("i=85")]
        refs = await client.get_node(start).get_references(
            refs=ua.ObjectIds.HierarchicalReferences,
            direction=ua.BrowseDirection.Forward)
        base = "" if args.node is None or _node_id(args.node)[1] is None \
            else args.node.strip("/") + "/"
        children: list[dict[str, Any]] = []
        for ref in refs:
            t = ref.NodeId
            nid = ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)
            bn = f"{ref.BrowseName.NamespaceIndex}:{ref.BrowseName.Name}"
            item: dict[str, Any] = {"browse_name": bn, "node_id": nid.to_string(),
                                    "class": ref.NodeClass.name}
            if args.node is None or base:
                item["path"] = base + bn
            children.append(item)
        variables = [c for c in children if c["class"] == "Variable"]
        if variables:
            params = ua.ReadParameters(NodesToRead=[
                ua.ReadValueId(NodeId=ua.NodeId.from_string(c["node_id"]),
                               AttributeId=ua.AttributeIds.Value) for c in variables],
                TimestampsToReturn=ua.TimestampsToReturn.Both)
            for c, dv in zip(variables, await client.uaclient.read(params), strict=True):
                c.update(_value_doc(dv))
        return {"endpoint": args.url, "node": start.to_string(), "children": children}

    return await _with_client(args, "Browse", work)


def read_command(args: argparse.Namespace) -> int:
    """`parkgate opcua read`."""
    _quiet(args)
    print(json.dumps(asyncio.run(_read(args)), indent=2))
    return 0


def browse_command(args: argparse.Namespace) -> int:
    """`parkgate opcua browse`."""
    _quiet(args)
    print(json.dumps(asyncio.run(_browse(args)), indent=2))
    return 0


async def _certs(args: argparse.Namespace) -> dict[str, Any]:
    from asyncua import Client  # noqa: PLC0415

    from . import trust  # noqa: PLC0415
    from .session import classify  # noqa: PLC0415

    try:
        endpoints = await Client(args.url, timeout=args.timeout) \
            .connect_and_get_server_endpoints()
    except Exception as exc:  # noqa: BLE001 - one line for the engineer
        raise ParkgateError(str(classify(exc, f"{args.url}: GetEndpoints"))) from None
    certs: dict[str, dict[str, Any]] = {}
    ders: dict[str, bytes] = {}
    for ep in endpoints:
        if not ep.ServerCertificate:
            continue
        der = trust.first_certificate(bytes(ep.ServerCertificate))
        key = trust.thumbprint(der)
        ders[key] = der
        doc = certs.setdefault(key, {**trust.info(der).as_dict(), "endpoints": []})
        doc["endpoints"].append(f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/"
                                f"{ep.SecurityMode.name}")
    out: dict[str, Any] = {"endpoint": args.url, "certificates": list(certs.values())}
    if args.accept is not None:
        out["accepted"] = _accept(args, ders)
    return out


def _accept(args: argparse.Namespace, ders: dict[str, bytes]) -> str:
    from . import trust  # noqa: PLC0415

    if not ders:
        raise ParkgateError(f"{args.url} sends no certificate (it offers no secured endpoint)")
    if args.thumbprint:
        want = args.thumbprint.replace(":", "").upper()
        if want not in ders:
            raise ParkgateError(f"the server sends {', '.join(sorted(ders))}, not {want}; "
                                "nothing accepted")
        der = ders[want]
    elif len(ders) == 1:
        der = next(iter(ders.values()))
    else:
        raise ParkgateError(f"the server has {len(ders)} certificates; pick one with "
                            "--thumbprint")
    if args.accept.exists() and not args.accept.is_dir():
        raise ParkgateError(f"--accept {args.accept}: not a directory")
    return str(trust.save(der, args.accept))


def cert_command(args: argparse.Namespace) -> int:
    """`parkgate opcua cert`."""
    _quiet(args)
    print(json.dumps(asyncio.run(_certs(args)), indent=2))
    return 0

