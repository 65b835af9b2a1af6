"""`parkgate command keygen` and `parkgate command send`: what an operator runs on a laptop."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ParkgateError

if TYPE_CHECKING:
    from gateway.config import Config

EXIT_NOT_OK = 3
"""`send`: the gateway answered, but not `ok` (refused, expired, failed, duplicate)."""
EXIT_NO_REPLY = 4


def _keygen(args: argparse.Namespace) -> int:
    from gateway.commands.signing import keygen  # noqa: PLC0415 - imports cryptography

    private = Path(args.private)
    try:
        public, kid = keygen(private)
    except FileExistsError as exc:
        raise ParkgateError(f"{exc.filename} exists; parkgate never overwrites a key") from None
    except OSError as exc:
        raise ParkgateError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(f"private key: {private} (mode 0600: keep it with the operator, never on a gateway)")
    print(f"public key:  {public} (copy to the gateway, list it in commands.verify_keys)")
    print(f"key id:      {kid} (audit records name the signer by it)")
    return 0


def parse_value(text: str) -> Any:
    """A command-line VALUE: JSON where it parses (21.5, true, "on"), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float | str) else text


def build_request(device: str, action: str, point: str | None, value: Any, *,
                  ts: int, rid: str | None = None) -> dict[str, Any]:
    """The request document (unsigned)."""
    doc: dict[str, Any] = {"v": 1, "id": rid or str(uuid.uuid4()), "ts": ts, "device": device,
                           "action": action}
    if point is not None:
        doc["point"] = point
    if action == "write":
        doc["value"] = value
    return doc


def _send(args: argparse.Namespace) -> int:
    from gateway.commands.request import ACTIONS, NEEDS_POINT, canonical_form  # noqa: PLC0415
    from gateway.config import ConfigProblems, load_config  # noqa: PLC0415
    from gateway.model import now_ms  # noqa: PLC0415

    if args.action not in ACTIONS:
        raise ParkgateError(f"ACTION must be one of {', '.join(ACTIONS)}")
    if args.action in NEEDS_POINT and args.point is None:
        raise ParkgateError(f"{args.action} needs a POINT")
    if args.action == "write" and args.value is None:
        raise ParkgateError("write needs a VALUE")
    if args.action not in NEEDS_POINT and args.point is not None:
        raise ParkgateError(f"{args.action} takes no POINT")
    try:
        cfg = load_config(Path(args.config)).config
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    doc = build_request(args.device, args.action, args.point,
                        parse_value(args.value) if args.value is not None else None, ts=now_ms())
    if args.key:
        from gateway.commands.signing import Signer  # noqa: PLC0415

        doc["sig"] = Signer.from_file(Path(args.key)).sign(canonical_form(doc))
    elif cfg.commands.verify_keys:
        print("parkgate: warning: no --key: the gateway accepts signed requests only",
              file=sys.stderr)
    reply = asyncio.run(send_request(cfg, doc, wait=args.timeout))
    if reply is None:
        print(f"parkgate: no reply within {args.timeout:g} s (is the gateway connected, "
              "and commands.enabled?)", file=sys.stderr)
        return EXIT_NO_REPLY
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply.get("status") == "ok" else EXIT_NOT_OK


async def send_request(cfg: Config, doc: dict[str, Any], *, wait: float
                       ) -> dict[str, Any] | None:
    """Publish `doc` on the gateway's command topic (MQTT 5: with a response topic and
    correlation data; 3.1.1: on the reply topic) and return its reply, or None."""
    import aiomqtt  # noqa: PLC0415
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    from gateway.uplink import Broker, tls_context  # noqa: PLC0415

    mqtt = cfg.uplink.mqtt
    topic, reply_topic = cfg.commands.topics(cfg.gateway.site, cfg.gateway.id)
    v5 = mqtt.protocol == "5"
    me = uuid.uuid4().hex[:12]
    response = f"{reply_topic}/{me}" if v5 else reply_topic
    correlation = doc["id"].encode()
    errors: list[str] = []
    for url in mqtt.brokers:
        broker = Broker.parse(url)
        client = aiomqtt.Client(
            broker.host, broker.port, identifier=f"parkgate-command-{me}",
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=tls_context(mqtt) if broker.tls else None,
            tls_insecure=(not mqtt.tls.verify) if broker.tls else None,
            timeout=mqtt.connect_timeout)
        try:
            async with client:
                await client.subscribe(response, qos=1)
                props = None
                if v5:
                    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    props.ResponseTopic = response
                    props.CorrelationData = correlation
                    # the broker drops it once no gateway could still carry it out
                    props.MessageExpiryInterval = max(1, math.ceil(cfg.commands.max_age))
                payload = json.dumps(doc, ensure_ascii=False).encode()
                await client.publish(topic, payload, qos=1, properties=props)
                try:
                    async with asyncio.timeout(wait):
                        async for msg in client.messages:
                            reply = _reply_for(msg.payload, doc["id"])
                            if reply is not None:
                                return reply
                except TimeoutError:
                    return None
        except aiomqtt.MqttError as exc:
            errors.append(f"{url}: {exc}")
    raise ParkgateError(f"no broker took the request: {'; '.join(errors)}")


def _reply_for(payload: Any, rid: str) -> dict[str, Any] | None:
    try:
        reply = json.loads(payload)
    except (TypeError, ValueError):
        return None
    return reply if isinstance(reply, dict) and reply.get("id") == rid else None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate command ...` to the parser."""
    p = sub.add_parser("command", help="signed commands to devices (keygen, send)")
    csub = p.add_subparsers(dest="command_command", metavar="COMMAND", required=True)
    k = csub.add_parser("keygen", help="write an Ed25519 key pair: FILE (private, 0600) and "
                                       "FILE.pub")
    k.add_argument("private", metavar="FILE", help="private key file to create, e.g. "
                   "operator.key (the public key goes to operator.pub)")
    k.set_defaults(handler=_keygen)
    s = csub.add_parser("send", help="publish a signed request through the configured "
                                     "broker and print the reply")
    s.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="the gateway's config file (broker, credentials, topics)")
    s.add_argument("device", metavar="DEVICE")
    s.add_argument("action", metavar="ACTION", help="write | read | poll | sync_time")
    s.add_argument("point", metavar="POINT", nargs="?", default=None)
    s.add_argument("value", metavar="VALUE", nargs="?", default=None,
                   help="JSON where it parses (21.5, true, \"auto\"), else text")
    s.add_argument("--key", metavar="FILE", default=None,
                   help="private key to sign with (parkgate command keygen)")
    s.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="how long to wait for the reply (default 30)")
    s.set_defaults(handler=_send)

