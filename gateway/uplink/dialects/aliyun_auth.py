"""Alibaba Cloud IoT Platform signing: the MQTT CONNECT of the gateway, and the per
sub-device sign of `thing/topo/add` and `combine/login` (pure functions).

MQTT CONNECT, documented at https://www.alibabacloud.com/help/doc-detail/73742.htm
("Establish MQTT connections over TCP"):
    mqttClientId = clientId + "|securemode=" + (2 TLS | 3 TCP) + ",signmethod=" + method
                   + ",timestamp=" + ms + "|"
    mqttUsername = deviceName + "&" + productKey
    mqttPassword = sign_hmac(deviceSecret, content), content = the parameters clientId,
                   deviceName, productKey, timestamp sorted by name, each name followed by
                   its value, nothing between: "clientId{c}deviceName{d}productKey{p}timestamp{t}"
The sub-device sign of topo/add and login is the same content and HMAC with the
sub-device's own DeviceSecret (https://www.alibabacloud.com/help/zh/iot/user-guide/
manage-topological-relationships, "加签算法"), whose worked example
hmacmd5("1234", "clientId868575026974305deviceName868575026974305productKeya1PB5fp1234
timestamp1646277090411") = 3BA0DFA4C477B40C007D84D30D6466CC (BatchAddThingTopo,
https://help.aliyun.com/document_detail/145672.htm) tests/platforms/test_signing.py checks.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.uplink.messages import Credentials

_HASHES = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1, "hmacmd5": hashlib.md5}


def content(client_id: str, device_name: str, product_key: str, timestamp: str) -> str:
    """The signed string: the parameters sorted by name, each name then its value."""
    return (f"clientId{client_id}deviceName{device_name}productKey{product_key}"
            f"timestamp{timestamp}")


def sign(secret: str, text: str, method: str = "hmacsha256") -> str:
    """HMAC of `text` with `secret` by `method` (hmacsha256, hmacsha1, hmacmd5), as
    upper-case hex (the documentation's examples; the platform compares either case)."""
    digest = _HASHES[method.lower()]
    return hmac.new(secret.encode(), text.encode(), digest).hexdigest().upper()


@dataclass(frozen=True, slots=True)
class Triple:
    """A device's identity on the platform."""

    product_key: str
    device_name: str
    device_secret: str

    def signed(self, client_id: str, timestamp: str, method: str) -> str:
        """This device's sign over `content()`."""
        return sign(self.device_secret, content(client_id, self.device_name,
                                                self.product_key, timestamp), method)


def connect(triple: Triple, client_id: str, timestamp: str, *, tls: bool,
            method: str = "hmacsha256") -> Credentials:
    """The CONNECT's client id, username and password for the gateway `triple`."""
    mode = 2 if tls else 3
    return Credentials(
        client_id=f"{client_id}|securemode={mode},signmethod={method},timestamp={timestamp}|",
        username=f"{triple.device_name}&{triple.product_key}",
        password=triple.signed(client_id, timestamp, method))
