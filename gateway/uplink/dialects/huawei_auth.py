"""Huawei Cloud IoTDA signing of the MQTT CONNECT (pure functions).

Documented at https://support.huaweicloud.com/intl/en-us/api-iothub/iot_06_v5_3009.html
("Device Connection Authentication") and https://support.huaweicloud.com/devg-iothub/iot_02_0203.html:
    ClientId = {device_id}_0_{0|1}_{YYYYMMDDHH}: device id, identity type 0 (device id),
               signature type (0: HMAC-SHA256 without checking the timestamp, 1: checking
               it), the UTC hour of connecting (2018/7/24 17:56:20 UTC -> 2018072417)
    Username = device_id
    Password = HMAC-SHA256 of the device secret, keyed by that timestamp, as hex.
The pages give the ClientId example `5f052ac562369102d42b0fb6_0_0_2019122614` and the
timestamp example; they print no example password, so the password is tested against the
formula as written (tests/platforms/test_signing.py), not against a documented digest.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from gateway.uplink.messages import Credentials


def timestamp(epoch_s: float | None = None) -> str:
    """The UTC hour as YYYYMMDDHH."""
    return time.strftime("%Y%m%d%H", time.gmtime(time.time() if epoch_s is None else epoch_s))


def password(secret: str, stamp: str) -> str:
    """HMAC-SHA256(key=timestamp, message=secret) as lower-case hex."""
    return hmac.new(stamp.encode(), secret.encode(), hashlib.sha256).hexdigest()


def connect(device_id: str, secret: str, stamp: str, *, check_timestamp: bool = True
            ) -> Credentials:
    """The CONNECT's client id, username and password."""
    return Credentials(client_id=f"{device_id}_0_{1 if check_timestamp else 0}_{stamp}",
                       username=device_id, password=password(secret, stamp))
