"""The commands path on the uplink: requests in through the dialect, replies out through it.

The dialect decodes (the native JSON, later Sparkplug DCMD or a platform's RPC) and
encodes the reply; this module only hands over and sends back. A reply goes on the
request's MQTT 5 response topic (with its correlation data) only when the request was
accepted as authentic; otherwise on the configured reply topic.
"""

from __future__ import annotations

import dataclasses

from structlog.typing import FilteringBoundLogger

from gateway.commands.runtime import CommandRuntime
from gateway.commands.service import Answer, Delivery
from gateway.uplink import Incoming, Uplink
from gateway.uplink.dialect import Request


class CommandLink:
    """The uplink's inbound handler for command requests."""

    def __init__(self, runtime: CommandRuntime, uplink: Uplink,
                 log: FilteringBoundLogger) -> None:
        self.runtime = runtime
        self.uplink = uplink
        self.log = log

    async def on_message(self, msg: Incoming) -> None:
        """Hand a request over (never waits for a device); ignore other messages."""
        request = self.uplink.dialect.decode(msg)
        if request is None:
            return
        delivery = Delivery(
            document=request.document, error=request.error,
            response_topic=msg.response_topic,
            correlation_data=msg.correlation_data, expiry_interval=msg.expiry_interval,
            received=msg.received or None, unsigned_ok=request.unsigned_ok)

        async def respond(_delivery: Delivery, answer: Answer) -> None:
            await self._respond(request, answer)

        self.runtime.submit(delivery, respond)

    async def _respond(self, request: Request, answer: Answer) -> None:
        incoming = request.incoming
        if answer.response_topic is None and incoming.response_topic is not None:
            # not authenticated: its response topic does not choose where we publish
            incoming = dataclasses.replace(incoming, response_topic=None,
                                           correlation_data=None)
            request = dataclasses.replace(request, incoming=incoming)
        out = self.uplink.dialect.reply(request, answer.reply)
        refusal = await self.uplink.send(out)
        if refusal is not None:
            self.log.warning("command reply not delivered", id=answer.reply.get("id"),
                             status=answer.outcome.status, topic=out.topic, reason=refusal)
