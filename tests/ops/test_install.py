"""systemd/install.sh and build-bundle.sh in a throwaway root: files, user, idempotence,
config and buffer kept, refusal of a config the new version rejects, rollback, and the
installed `parkgate` really running. Needs PyPI (build-bundle downloads wheels) and root
(useradd/chown in the throwaway root)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, Collector, Mosquitto, base_config, write_config

INSTALL = ROOT / "systemd" / "install.sh"
BUILD = ROOT / "systemd" / "build-bundle.sh"
ARCH = platform.machine()

OPTIONAL_DRIVER_WHEELS = {"asyncua", "aiosqlite", "python_dateutil", "pytz", "sortedcontainers",
                          "bacpypes3"}
"""Wheels the `opcua` and `bacnet` extras add (with asyncua's main dependencies; the
version-dependent ones, e.g. wait_for2 before Python 3.12, are left out)."""

BUNDLE = pytest.mark.xdist_group("install-bundle")
"""Tests of the module's `bundle`: one xdist worker, so one bundle build per run (not one per
worker); the tests that build bundles of their own (armv7l, sdist) run on any worker."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: useradd --prefix and chown"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd (passwd) not installed"),
    pytest.mark.skipif(ARCH not in {"x86_64", "aarch64", "armv7l"},
                       reason=f"no bundle target for {ARCH}"),
]


def sh(*args: str | Path, check: bool = True, timeout: float = 300,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                         timeout=timeout, check=False,
                         env={**os.environ, "PYTHON": sys.executable, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"{args} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def build_bundle(arch: str, out: Path) -> Path:
    res = sh(BUILD, "--arch", arch, "--out", out, "--python", sys.executable, timeout=600)
    tarball = Path(res.stdout.strip().splitlines()[-1])
    assert tarball.exists(), res.stderr
    with tarfile.open(tarball) as tf:
        tf.extractall(out, filter="data")
    return out / tarball.name.removesuffix(".tar.gz")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An offline bundle for this machine's architecture."""
    return build_bundle(ARCH, tmp_path_factory.mktemp("bundle"))


def fake_root(path: Path) -> Path:
    """A root with just the user database, so useradd --prefix has files to edit."""
    etc = path / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\nbluetooth:x:112:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\nbluetooth:*::\n")
    for f in ("shadow", "gshadow"):
        (etc / f).chmod(0o600)
    return path


def install(root: Path, *extra: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(INSTALL, "--root", root, "--python", sys.executable, *extra, check=check)


def venv_target(root: Path) -> str:
    return os.readlink(root / "opt/parkgate/venv")


@pytest.fixture(scope="module")
def installed(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = fake_root(tmp_path_factory.mktemp("root") / "r")
    install(root, "--from-bundle", bundle)
    return root


@BUNDLE
def test_bundle_contents(bundle: Path) -> None:
    manifest = dict(line.split("=", 1) for line in (bundle / "MANIFEST.txt").read_text()
                    .splitlines() if "=" in line and not line.startswith("#"))
    assert manifest["arch"] == ARCH
    assert manifest["python"] == f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert manifest["extras"] == "opcua,bacnet"
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl"))
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"parkgate", "pydantic_core", "pydantic", "aiomqtt", "paho_mqtt", "pymodbus",
            "bleak", "dbus_fast", "prometheus_client", "structlog", "pyyaml",
            "cryptography", "cffi"} <= names
    # the optional drivers' libraries: every site can use OPC UA and BACnet
    assert names >= OPTIONAL_DRIVER_WHEELS, OPTIONAL_DRIVER_WHEELS - names
    for w in wheels:
        if w.split("-")[0].lower() in OPTIONAL_DRIVER_WHEELS:
            assert w.endswith("-none-any.whl"), w   # pure: one resolution fits every arch
    core = next(w for w in wheels if w.startswith("pydantic_core-"))
    assert ARCH in core, core
    for f in ("install.sh", "parkgate.service", "parkgate.yaml.example"):
        assert (bundle / f).exists(), f
    assert os.access(bundle / "install.sh", os.X_OK)
    profiles = sorted(p.name for p in (ROOT / "config/profiles").glob("*.yaml"))
    assert sorted(p.name for p in (bundle / "profiles").glob("*.yaml")) == profiles
    unit = (ROOT / "systemd/parkgate.service").read_text()
    assert (bundle / "parkgate.service").read_text() == unit


@BUNDLE
def test_fresh_install_layout(installed: Path) -> None:
    r = installed
    venv = r / "opt/parkgate/venv"
    assert venv.is_symlink()
    assert venv_target(r).startswith("venvs/")
    exe = venv / "bin/parkgate"
    out = sh(exe, "version").stdout.strip()
    assert out.startswith("parkgate "), out
    assert out.split()[1][0].isdigit()
    # unit, verbatim, and enabled through systemctl --root when systemctl exists
    unit = r / "etc/systemd/system/parkgate.service"
    assert unit.read_text() == (ROOT / "systemd/parkgate.service").read_text()
    if shutil.which("systemctl"):
        assert (r / "etc/systemd/system/multi-user.target.wants/parkgate.service").is_symlink()
    # user: system account, no login, in dialout and bluetooth
    pw = {line.split(":")[0]: line.split(":")
          for line in (r / "etc/passwd").read_text().splitlines()}
    assert "parkgate" in pw
    assert pw["parkgate"][6] == "/usr/sbin/nologin"
    assert int(pw["parkgate"][2]) < 1000
    groups = {line.split(":")[0]: line.split(":")[3].split(",")
              for line in (r / "etc/group").read_text().splitlines()}
    assert "parkgate" in groups["dialout"]
    assert "parkgate" in groups["bluetooth"]
    uid, gid = int(pw["parkgate"][2]), int(pw["parkgate"][3])
    # state directory owned by the service; config root-owned, group-readable only
    st = (r / "var/lib/parkgate").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750)
    etc = r / "etc/parkgate"
    st = etc.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o750)
    conf = etc / "parkgate.yaml"
    st = conf.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640)
    doc = yaml.safe_load(conf.read_text())
    assert doc["buffer"]["path"] == "/var/lib/parkgate/buffer.db"
    assert sh(exe, "check", conf).returncode == 0


def unit_environment(unit: Path) -> dict[str, str]:
    """KEY=VALUE pairs of every `Environment=` line of a unit file."""
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@BUNDLE
def test_installed_venv_holds_the_units_bytecode(installed: Path) -> None:
    """The unit runs Python with -OO from the venv's pycache: the installer compiled every
    module `parkgate run` imports into it, standard library included, so the agent
    compiles nothing at start (which would cost more memory than -OO saves)."""
    unit_env = unit_environment(installed / "etc/systemd/system/parkgate.service")
    assert unit_env["PYTHONOPTIMIZE"] == "2"
    assert unit_env["PYTHONDONTWRITEBYTECODE"] == "1"  # so what is found below was installed
    prefix = unit_env["PYTHONPYCACHEPREFIX"]
    assert prefix == "/opt/parkgate/venv/pycache"
    # the console script runs the venv's python by its real directory, as systemd would
    venv = (installed / "opt/parkgate/venv").resolve()
    env = {**os.environ, **unit_env, "PYTHONPYCACHEPREFIX": f"{installed}{prefix}"}
    probe = """
import os, sys
import gateway.cli, gateway.corecli, gateway.config, gateway.agent, drivers.sim, drivers.modbus
assert sys.flags.optimize == 2, sys.flags.optimize
specs = [m.__spec__ for m in list(sys.modules.values()) if getattr(m, '__spec__', None)]
sources = [s for s in specs if s.has_location and (s.origin or '').endswith('.py')]
missing = [s.name for s in sources
           if not (s.cached.endswith('.opt-2.pyc') and os.path.exists(s.cached))]
print(len(sources), *missing)
"""
    res = subprocess.run([str(venv / "bin/python"), "-c", probe], env=env, cwd=installed,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    count, *missing = res.stdout.split()
    assert int(count) > 300  # the whole run path was imported from source files
    assert missing == [], f"compiled at start, not by the installer: {missing}"


@BUNDLE
def test_installed_gateway_can_use_the_opcua_and_bacnet_drivers(installed: Path,
                                                                tmp_path: Path) -> None:
    """The offline install carries both optional drivers: their libraries load in the
    installed venv, and the devices of their samples pass `parkgate check` there (which
    loads the OPC UA driver and asks for bacpypes3: a plain install fails it)."""
    venv = installed / "opt/parkgate/venv"
    # -I: not the checkout's drivers/ from the working directory, nor PYTHONPATH
    out = sh(venv / "bin/python", "-I", "-c",
             "import sys; from drivers.opcua import OpcUaDriver; import drivers.bacnet.link, "
             "asyncua, bacpypes3; print(OpcUaDriver.__name__, *(sys.modules[m].__file__ for m "
             "in ('drivers.opcua.driver', 'drivers.bacnet.link', 'asyncua', 'bacpypes3')))"
             ).stdout.split()
    assert out[0] == "OpcUaDriver"
    assert len(out) == 5
    for path in out[1:]:   # all from the installed venv
        assert path.startswith(str(installed / "opt/parkgate/")), path
    # one config with the devices of both samples: one `parkgate check`, not two
    opcua, bacnet = (yaml.safe_load((ROOT / "drivers" / d / "sample.yaml").read_text())
                     for d in ("opcua", "bacnet"))
    both = {**opcua, "devices": opcua["devices"] + bacnet["devices"]}
    assert {d["driver"] for d in both["devices"]} == {"opcua", "bacnet"}
    conf = tmp_path / "both.yaml"
    conf.write_text(yaml.safe_dump(both, sort_keys=False))
    res = sh(venv / "bin/parkgate", "check", conf, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "opcua" in res.stdout and "bacnet" in res.stdout, res.stdout


@BUNDLE
def test_installed_unit_verifies_against_the_installed_binary(installed: Path,
                                                              tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    text = (installed / "etc/systemd/system/parkgate.service").read_text()
    exe = installed / "opt/parkgate/venv/bin/parkgate"
    copy = tmp_path / "parkgate.service"
    copy.write_text(text.replace("ExecStart=/opt/parkgate/venv/bin/parkgate ",
                                 f"ExecStart={exe} "))
    res = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""


@BUNDLE
def test_installed_gateway_runs_and_publishes(installed: Path, tmp_path: Path,
                                              ops_broker: Mosquitto) -> None:
    """The installed venv has every runtime dependency: a sim device reaches the broker."""
    cfg = base_config(tmp_path, ops_broker.port,
                      [{"name": "sim-inst", "driver": "sim", "interval": "100ms", "points": 2}])
    path = write_config(tmp_path / "gw.yaml", cfg)
    exe = installed / "opt/parkgate/venv/bin/parkgate"
    col = Collector(ops_broker.port)
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen([str(exe), "run", "-c", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            ok = col.wait_for(lambda c: sum(r["device"] == "sim-inst" for r in c.readings()) >= 4,
                              timeout=30)
            assert ok, (tmp_path / "gw.log").read_text()
            good = [r for r in col.readings() if r["device"] == "sim-inst"]
            assert {r["quality"] for r in good} == {"good"}
        finally:
            proc.terminate()
            proc.wait(20)
            col.close()
    assert proc.returncode == 0


@BUNDLE
def test_reinstall_keeps_config_and_buffer_then_refuses_bad_config_then_rolls_back(
        bundle: Path, installed: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(installed, root, symlinks=True)   # a first install, as it was left
    first = venv_target(root)
    conf = root / "etc/parkgate/parkgate.yaml"
    edited = re.sub(r"(?m)^(  id: )\S+", r"\1edited-gw", conf.read_text(), count=1)
    assert "id: edited-gw" in edited
    edited += "# field edit\n"
    conf.write_text(edited)
    buffer = root / "var/lib/parkgate/buffer.db"
    buffer.write_bytes(b"not really sqlite, but it must survive\n" * 100)
    before = buffer.read_bytes()
    conf.chmod(0o644)  # an older install, or an engineer's cp: passwords world-readable

    again = install(root, "--from-bundle", bundle)
    assert "kept" in again.stdout
    assert conf.read_text() == edited
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert f"tightened {conf} from mode 644 to 0640" in again.stdout
    assert buffer.read_bytes() == before
    second = venv_target(root)
    assert second != first
    assert os.readlink(root / "opt/parkgate/venv.previous") == first
    assert sorted(p.name for p in (root / "opt/parkgate/venvs").iterdir()) == sorted(
        [first.removeprefix("venvs/"), second.removeprefix("venvs/")])
    pw = (root / "etc/passwd").read_text()
    assert pw.count("\nparkgate:") == 1
    assert (root / "etc/group").read_text().count("parkgate") == 3  # own group, dialout, bt

    # A config the new version rejects: nothing changes.
    conf.write_text(edited + "devices: [{name: x, driver: nosuchdriver}]\n")
    bad = install(root, "--from-bundle", bundle, check=False)
    assert bad.returncode != 0
    assert "rejects" in bad.stderr
    assert venv_target(root) == second
    assert len(list((root / "opt/parkgate/venvs").iterdir())) == 2

    back = sh(INSTALL, "--root", root, "--rollback")
    assert "now running" in back.stdout
    assert venv_target(root) == first
    assert os.readlink(root / "opt/parkgate/venv.previous") == second


@BUNDLE
def test_installer_refuses_a_bundle_for_another_arch(bundle: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    manifest = other / "MANIFEST.txt"
    wrong = "armv7l" if ARCH != "armv7l" else "aarch64"
    manifest.write_text(manifest.read_text().replace(f"arch={ARCH}", f"arch={wrong}"))
    res = install(fake_root(tmp_path / "r"), "--from-bundle", other, check=False)
    assert res.returncode != 0
    assert f"bundle is for {wrong}" in res.stderr


def test_armv7l_bundle_fills_the_gaps_pypi_leaves(tmp_path: Path) -> None:
    """PyPI has no armv7l wheels for dbus-fast (built here, pure Python) nor for cffi
    (shipped as sdist with its build requirements, compiled on the gateway)."""
    b = build_bundle("armv7l", tmp_path)
    files = {p.name for p in (b / "wheels").iterdir()}
    dbus = next(w for w in files if w.startswith("dbus_fast-"))
    assert dbus.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(b / "wheels" / dbus) as z:
        assert not [n for n in z.namelist() if n.endswith(".so")]
        assert "dbus_fast/message_bus.py" in z.namelist()
    assert any("armv7l" in w for w in files if w.startswith("pydantic_core-"))
    assert any("armv7l" in w for w in files if w.startswith("cryptography-"))
    assert any(w.startswith("cffi-") and w.endswith(".tar.gz") for w in files)
    assert any(w.startswith("setuptools-") for w in files)   # builds cffi offline
    for lib in ("asyncua-", "bacpypes3-"):   # the optional drivers, pure Python
        assert any(w.startswith(lib) and w.endswith("-none-any.whl") for w in files), lib
    manifest = (b / "MANIFEST.txt").read_text()
    assert "built_pure=dbus-fast==" in manifest
    # cffi among them, not necessarily alone: PyYAML 6.0.4 has no armv7l wheel either
    needs_build = re.search(r"(?m)^needs_build=(.*)$", manifest)
    assert needs_build and any(p.startswith("cffi==") for p in needs_build[1].split()), manifest


def test_sdist_in_bundle_is_compiled_offline_on_install(tmp_path: Path) -> None:
    """The armv7l path, run here: cffi shipped as sdist, compiled with --no-index."""
    b = build_bundle_forced(tmp_path / "b")
    assert "needs_build=cffi==" in (b / "MANIFEST.txt").read_text()
    root = fake_root(tmp_path / "r")
    res = install(root, "--from-bundle", b)
    assert "will compile from source: cffi==" in res.stdout
    py = root / "opt/parkgate/venv/bin/python"
    out = sh(py, "-c", "import cffi, cryptography.hazmat.primitives.ciphers.aead as a; "
                       "print(cffi.__version__, a.AESCCM.__name__)").stdout
    assert out.split()[1] == "AESCCM"


def build_bundle_forced(out: Path) -> Path:
    res = sh(BUILD, "--arch", ARCH, "--out", out, "--python", sys.executable,
             "--force-sdist", "cffi", timeout=600)
    tarball = Path(res.stdout.strip().splitlines()[-1])
    with tarfile.open(tarball) as tf:
        tf.extractall(out, filter="data")
    return out / tarball.name.removesuffix(".tar.gz")


# -- an SD card image prepared in a chroot ---------------------------------------------------
def _can_chroot() -> bool:
    return (os.geteuid() == 0 and shutil.which("unshare") is not None
            and shutil.which("chroot") is not None and Path("/dev/shm").is_dir())


class Image:
    """A copy-on-write image of this machine's root (overlayfs: changes go to a scratch
    directory) to run commands in with `chroot`, as an image builder does: no systemd
    runs inside, /dev and /proc are bound in, nothing reaches the real root."""

    def __init__(self, scratch: Path) -> None:
        self.dirs = {d: scratch / d for d in ("upper", "work", "merged")}
        for d in self.dirs.values():
            d.mkdir(parents=True)

    def run(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        d = self.dirs
        mount = (f"mount -t overlay overlay -o lowerdir=/,upperdir={d['upper']},"
                 f"workdir={d['work']} {d['merged']} && mount --rbind /dev {d['merged']}/dev"
                 f" && mount -t proc proc {d['merged']}/proc"
                 f' && exec chroot {d["merged"]} /bin/sh -c "$0"')
        # a private mount namespace: the mounts vanish with it
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               mount, script], capture_output=True, text=True,
                              timeout=timeout, check=False,
                              env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture
def image() -> Iterator[Image]:
    scratch = Path(f"/dev/shm/parkgate-image-{os.getpid()}")  # not below /: no overlap
    try:
        yield Image(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@BUNDLE
@pytest.mark.skipif(not _can_chroot(), reason="needs root, unshare, chroot and /dev/shm")
def test_image_prepared_in_a_chroot_boots_into_a_running_gateway(bundle: Path,
                                                                  image: Image) -> None:
    """The installer run inside a chroot (no systemd running) enables the unit all the
    same, and `parkgate demo` runs from the installed venv: the package ships its config
    and the meter emulator, so an engineer can prove the broker path on the gateway."""
    probe = image.run("test -d /run/systemd/system && echo systemd || echo none")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount an overlay and chroot here: {probe.stderr.strip()}")
    assert probe.stdout.strip() == "none", probe.stdout  # what a chroot looks like
    res = image.run(f"{bundle}/install.sh --python {sys.executable}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "enabled parkgate.service without a running systemd" in res.stdout, res.stdout
    link = image.run("readlink /etc/systemd/system/multi-user.target.wants/parkgate.service")
    assert link.stdout.strip() == "/etc/systemd/system/parkgate.service", link
    demo = image.run("cd / && /opt/parkgate/venv/bin/parkgate demo --seconds 8", timeout=120)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    final = demo.stdout.rsplit("parkgate demo", 1)[-1]
    counts = {m.group(1): int(m.group(2))
              for m in re.finditer(r"(?m)^(\S+)\s+(\d+)  ", final)}
    assert counts.get("line-counter", 0) > 0, demo.stdout[-3000:]
    assert counts.get("main-meter", 0) > 0, demo.stdout[-3000:]  # the emulator ran
    arrived = re.search(r"stopped\. (\d+) readings arrived upstream", demo.stdout)
    assert arrived and int(arrived.group(1)) > 0, demo.stdout[-3000:]
