"""Secured endpoints: Basic256Sha256, trust list, trust on first use, changed certificates."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncua import ua
from emulators.opcua_server import PlantServer
from structlog.testing import capture_logs

from drivers.opcua.trust import thumbprint
from gateway.errors import DeviceConfigError
from tests.opcua.conftest import Certs, Drivers, node


def secured(certs: Certs, trusted: list[str], mode: str = "SignAndEncrypt",
            **extra: object) -> dict[str, object]:
    return {"policy": "Basic256Sha256", "mode": mode, "certificate": str(certs.client.cert),
            "private_key": str(certs.client.key), "trusted": trusted, **extra}


async def test_sign_and_encrypt_with_password(secure_plant: PlantServer, certs: Certs,
                                              drivers: Drivers) -> None:
    drv = await drivers.open(
        secure_plant.url, [node("Double")],
        security=secured(certs, [str(certs.server.cert)]),
        auth={"type": "username", "username": "operator", "password": "secret"})
    assert drv.client is not None
    assert drv.client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
    (r,) = await drv.poll()  # type: ignore[attr-defined]
    assert (r.value, r.quality) == (2.5, "good")


async def test_sign_with_user_certificate(secure_plant: PlantServer, certs: Certs,
                                          drivers: Drivers, tmp_path: Path) -> None:
    trust_dir = tmp_path / "trusted"
    trust_dir.mkdir()
    (trust_dir / "plant.der").write_bytes(certs.server.cert.read_bytes())
    drv = await drivers.open(
        secure_plant.url, [node("Int16")], security=secured(certs, [str(trust_dir)], "Sign"),
        auth={"type": "certificate", "certificate": str(certs.client.cert),
              "private_key": str(certs.client.key)})
    assert drv.client is not None
    assert drv.client.security_policy.Mode == ua.MessageSecurityMode.Sign
    assert [r.value for r in await drv.poll()] == [-1234]  # type: ignore[attr-defined]


async def test_wrong_password_is_a_config_error(secure_plant: PlantServer, certs: Certs,
                                                drivers: Drivers) -> None:
    drv = drivers.make(secure_plant.url, [node("Double")],
                       security=secured(certs, [str(certs.server.cert)]),
                       auth={"type": "username", "username": "operator", "password": "nope"})
    with pytest.raises(DeviceConfigError, match=r"BadUserAccessDenied|BadIdentityToken"):
        await drv.open()


async def test_untrusted_certificate_is_refused_with_its_thumbprint(
        secure_plant: PlantServer, certs: Certs, drivers: Drivers, tmp_path: Path) -> None:
    drv = drivers.make(secure_plant.url, [node("Double")],
                       security=secured(certs, [str(tmp_path / "empty")]))
    with pytest.raises(DeviceConfigError) as err:
        await drv.open()
    seen = thumbprint(certs.server.cert.read_bytes())
    assert seen in str(err.value) and "not trusted" in str(err.value)
    assert "parkgate opcua cert" in str(err.value)
    assert err.value.kind == "certificate"
    assert not (tmp_path / "empty").exists()  # nothing accepted silently


async def test_trust_on_first_use_then_a_changed_certificate(
        secure_plant: PlantServer, certs: Certs, drivers: Drivers, tmp_path: Path) -> None:
    store = tmp_path / "trusted"
    sec = secured(certs, [str(store)], trust_on_first_use=True)
    with capture_logs() as logs:
        drv = await drivers.open(secure_plant.url, [node("Double")], security=sec)
    first = thumbprint(certs.server.cert.read_bytes())
    assert [p.name for p in store.iterdir()] == [f"{first}.der"]
    assert any(e.get("thumbprint") == first and e["log_level"] == "warning" for e in logs)
    assert [r.value for r in await drv.poll()] == [2.5]  # type: ignore[attr-defined]
    await drv.close()
    # a restart with the same certificate: trusted now, connects without a word
    await secure_plant.restart()
    with capture_logs() as logs:
        same = await drivers.open(secure_plant.url, [node("Double")], security=sec)
    assert [r.value for r in await same.poll()] == [2.5]  # type: ignore[attr-defined]
    assert not [e for e in logs if e["log_level"] == "warning"]
    await same.close()
    # the server comes back with another certificate: refused, both thumbprints named
    await secure_plant.restart(cert=certs.other_server.cert, key=certs.other_server.key)
    again = drivers.make(secure_plant.url, [node("Double")], security=sec)
    with pytest.raises(DeviceConfigError) as err:
        await again.open()
    other = thumbprint(certs.other_server.cert.read_bytes())
    assert other in str(err.value) and first in str(err.value)
    assert [p.name for p in store.iterdir()] == [f"{first}.der"]


async def test_no_endpoint_with_the_policy_is_a_config_error(plant: PlantServer, certs: Certs,
                                                              drivers: Drivers) -> None:
    drv = drivers.make(plant.url, [node("Double")],
                       security=secured(certs, [str(certs.server.cert)]))
    with pytest.raises(DeviceConfigError, match=r"offers no endpoint with "
                       r"Basic256Sha256/SignAndEncrypt; it offers None/None"):
        await drv.open()
