"""MQTT uplink: stored chunks -> batched QoS 1 publishes, deleted from the buffer on PUBACK.

In parts: `session` (connect, failover, backoff, announce, the inbound/outbound API),
`scheduler` (backlog and live streams, live share, holds of refused devices), `publisher`
(the window, PUBACK reason codes, refusals), `exchange` (incoming messages to a handler,
retained state), `dialect` and `dialects/` (everything on the wire), `brokers` (URLs, TLS),
`adapter` (every aiomqtt/paho internal we touch) and `messages` (Incoming, Outgoing).
"""

from gateway.uplink.brokers import AUTH_CODES, Broker, tls_context
from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription
from gateway.uplink.session import SessionTakenOver, Uplink
from gateway.uplink.state import UplinkState

__all__ = [
    "AUTH_CODES",
    "Broker",
    "Credentials",
    "Incoming",
    "Outgoing",
    "SessionTakenOver",
    "Subscription",
    "Uplink",
    "UplinkState",
    "tls_context",
]
