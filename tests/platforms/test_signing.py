"""The platforms' signing formulas against the documentation's own example values."""

from __future__ import annotations

import calendar
import hashlib
import hmac

from gateway.uplink.dialects import aliyun_auth, huawei_auth


def test_aliyun_content_and_hmac_match_the_documented_examples() -> None:
    # "Establish MQTT connections over TCP" (doc 73742/63656): clientId 12345, deviceName
    # device, productKey pk, timestamp 789, hmacsha1, secret "secret"
    text = aliyun_auth.content("12345", "device", "pk", "789")
    assert text == "clientId12345deviceNamedeviceproductKeypktimestamp789"
    assert aliyun_auth.sign("secret", text, "hmacsha1") == \
        "FAFD82A3D602B37FB0FA8B7892F24A477F851A14"
    # the triple example of the same page family: light1983432 / a14Xib5kdYd
    triple = aliyun_auth.Triple("a14Xib5kdYd", "light1983432", "oLyaKqVxtRvjH284LdhqVgVUx1UPy6zq")
    assert triple.signed("SN1928339", "1539421321846", "hmacsha1") == \
        "b2488041f64f425016b467ee1c94959ebd592ad1".upper()


def test_aliyun_sub_device_sign_matches_the_batch_add_topo_example() -> None:
    # BatchAddThingTopo: ClientId=DeviceName=868575026974305, ProductKey=a1PB5fp1234,
    # hmacmd5, timestamp=1646277090411, deviceSecret=1234 -> 3BA0DFA4C477B40C007D84D30D6466CC
    sub = aliyun_auth.Triple("a1PB5fp1234", "868575026974305", "1234")
    assert sub.signed("868575026974305", "1646277090411", "hmacmd5") == \
        "3BA0DFA4C477B40C007D84D30D6466CC"


def test_aliyun_connect_credentials_follow_the_documented_shape() -> None:
    triple = aliyun_auth.Triple("a14Xib5kdYd", "light1983432", "oLyaKqVxtRvjH284LdhqVgVUx1UPy6zq")
    creds = aliyun_auth.connect(triple, "SN1928339", "1539421321846", tls=False,
                                method="hmacsha1")
    # the page's own result for these values (securemode=3: TCP)
    assert creds.client_id == "SN1928339|securemode=3,signmethod=hmacsha1,timestamp=1539421321846|"
    assert creds.username == "light1983432&a14Xib5kdYd"
    assert creds.password == "B2488041F64F425016B467EE1C94959EBD592AD1"
    tls = aliyun_auth.connect(triple, "a14Xib5kdYd.light1983432", "1539421321846", tls=True)
    assert tls.client_id == ("a14Xib5kdYd.light1983432|securemode=2,signmethod=hmacsha256,"
                             "timestamp=1539421321846|")
    # hmacsha256 over the same documented content string (no page prints a sha256 result)
    want = hmac.new(b"oLyaKqVxtRvjH284LdhqVgVUx1UPy6zq",
                    b"clientIda14Xib5kdYd.light1983432deviceNamelight1983432productKey"
                    b"a14Xib5kdYdtimestamp1539421321846", hashlib.sha256).hexdigest().upper()
    assert tls.password == want


def test_huawei_timestamp_client_id_and_password() -> None:
    # "the UTC time 2018/7/24 17:56:20 -> 2018072417"
    assert huawei_auth.timestamp(calendar.timegm((2018, 7, 24, 17, 56, 20))) == "2018072417"
    creds = huawei_auth.connect("5f052ac562369102d42b0fb6", "s3cret", "2019122614",
                                check_timestamp=False)
    assert creds.client_id == "5f052ac562369102d42b0fb6_0_0_2019122614"  # the page's example
    assert creds.username == "5f052ac562369102d42b0fb6"
    # HMAC-SHA256 "with the timestamp as the key" over the secret (no example digest given)
    assert creds.password == hmac.new(b"2019122614", b"s3cret", hashlib.sha256).hexdigest()
    assert huawei_auth.connect("d1", "s", "2019122614").client_id == "d1_0_1_2019122614"
