"""The aiomqtt client of one connection, from the config, the broker and the dialect session.

What goes into the CONNECT (the session's credentials and will, the clean-session choice,
MQTT 5 properties, TLS, keepalive) and the client's queues, sized to the publish window.
"""

from __future__ import annotations

import logging
import ssl

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY

from gateway.config import MqttSection
from gateway.uplink import adapter
from gateway.uplink.brokers import Broker
from gateway.uplink.dialect import DialectSession
from gateway.uplink.exchange import INBOUND_QUEUE


def mqtt_client(cfg: MqttSection, broker: Broker, session: DialectSession, *,
                tls: ssl.SSLContext | None, logger: logging.Logger,
                session_expiry: int) -> aiomqtt.Client:
    """A client for `broker` (not connected yet); `tls` when the broker URL asks for it;
    `session_expiry` seconds the broker keeps our session unless the dialect needs a clean
    one."""
    v5 = cfg.protocol == "5"
    will = session.will
    creds = session.credentials
    keep = 0 if creds.clean else session_expiry  # Sparkplug wants a clean one
    client = aiomqtt.Client(
        broker.host, broker.port,
        logger=logger,
        username=creds.username,
        password=creds.password,
        identifier=creds.client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        # a kept session lets the broker queue requests on our subscriptions while
        # we are away (answered, or expired, when we are back)
        clean_session=None if v5 else not keep,
        # paho takes no clean_start on 3.1.1 but its default (first connect only)
        clean_start=False if v5 and keep else MQTT_CLEAN_START_FIRST_ONLY,
        properties=adapter.connect_properties(keep) if v5 else None,
        will=None if will is None else aiomqtt.Will(
            will.topic, will.payload, qos=will.qos, retain=will.retain,
            properties=adapter.properties(will, v5)),
        keepalive=int(cfg.keepalive),
        timeout=cfg.connect_timeout,
        tls_context=tls,
        tls_insecure=(not cfg.tls.verify) if broker.tls else None,
        max_inflight_messages=cfg.window,
        max_queued_incoming_messages=INBOUND_QUEUE,
        max_queued_outgoing_messages=cfg.window * 2,
    )
    # a full window of publishes awaiting PUBACK is normal here, not worth a warning
    client.pending_calls_threshold = cfg.window * 2 + 10
    return client
