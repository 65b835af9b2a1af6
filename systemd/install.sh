#!/usr/bin/env bash
# Install or upgrade parkgate as a systemd service on Debian / Raspberry Pi OS.
#
#   sudo systemd/install.sh                       # from a source checkout, wheels from PyPI
#   sudo ./install.sh                             # inside an unpacked offline bundle
#   sudo systemd/install.sh --from-bundle DIR     # same, bundle elsewhere
#   systemd/install.sh --root /tmp/r ...          # into a throwaway root (tests, images)
#
# Safe to run again: the config and the buffer are never replaced; each run builds a new
# venv beside the old one and switches /opt/parkgate/venv to it only once it works and
# accepts the existing config. `--rollback` switches back. See systemd/README.md.
#
# It installs parkgate with its optional drivers, parkgate[opcua,bacnet] (asyncua and
# bacpypes3, pure Python; a bundle says which extras it carries: MANIFEST.txt extras=),
# always rather than by option: a driver's library is imported only when the config has
# such a device, so it costs disk, not memory, and adding an OPC UA PLC or a BACnet
# chiller to a site later needs no reinstall and no pip.
set -euo pipefail

PROG=install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ROOT=${DESTDIR:-/}
BUNDLE=
SOURCE=
PYTHON=${PYTHON:-python3}
SYSTEMCTL=auto      # auto | no
START=no
FORCE=no
ALLOW_INDEX=no
ACTION=install

usage() {
    cat <<EOF
usage: $PROG [options]
  --root DIR, --prefix DIR  install below DIR instead of / (also: DESTDIR=DIR)
  --from-bundle DIR         offline: wheels from an unpacked bundle (build-bundle.sh)
  --source DIR              a parkgate source checkout (default: this script's repo)
  --python PATH             interpreter for the venv (default: python3, needs >= 3.11)
  --allow-index             bundle mode: fetch from PyPI what the bundle lacks
  --start                   start (or restart) the service when done
  --no-systemctl            do not call systemctl at all
  --force                   upgrade even if the new version rejects the current config
  --rollback                switch back to the previous venv and restart
  --print-example-config    print the example config this installer would install
  -h, --help                this text
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*"; }

while [ $# -gt 0 ]; do
    case $1 in
        --root|--prefix) ROOT=${2:?$1 needs a directory}; shift 2 ;;
        --root=*|--prefix=*) ROOT=${1#*=}; shift ;;
        --from-bundle) BUNDLE=${2:?--from-bundle needs a directory}; shift 2 ;;
        --from-bundle=*) BUNDLE=${1#*=}; shift ;;
        --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
        --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
        --allow-index) ALLOW_INDEX=yes; shift ;;
        --start) START=yes; shift ;;
        --no-systemctl) SYSTEMCTL=no; shift ;;
        --force) FORCE=yes; shift ;;
        --rollback) ACTION=rollback; shift ;;
        --print-example-config) ACTION=example; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# Run inside an unpacked bundle without --from-bundle: use it.
if [ -z "$BUNDLE" ] && [ -z "$SOURCE" ] && [ -f "$HERE/MANIFEST.txt" ] && [ -d "$HERE/wheels" ]; then
    BUNDLE=$HERE
fi
if [ -z "$BUNDLE" ] && [ -z "$SOURCE" ]; then
    SOURCE=$(cd "$HERE/.." && pwd)
fi

ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
R=${ROOT%/}                        # "" for the real root, so "$R/etc" is "/etc"
OPT=$R/opt/parkgate
ETC=$R/etc/parkgate
STATE=$R/var/lib/parkgate
UNIT_DIR=$R/etc/systemd/system
USER_NAME=parkgate

# --- inputs --------------------------------------------------------------------------
example_config() {
    # The lead's config/example.yaml once it exists; until then the sim sample, pointed at
    # the service's state directory.
    if [ -n "$BUNDLE" ]; then
        cat "$BUNDLE/parkgate.yaml.example"
    elif [ -f "$SOURCE/config/example.yaml" ]; then
        cat "$SOURCE/config/example.yaml"
    elif [ -f "$SOURCE/drivers/sim/sample.yaml" ]; then
        echo "# parkgate config: edit gateway.id, the broker and the devices, then"
        echo "#   parkgate check /etc/parkgate/parkgate.yaml && systemctl restart parkgate"
        sed -e 's#path: /tmp/parkgate-sample.db#path: /var/lib/parkgate/buffer.db#' \
            "$SOURCE/drivers/sim/sample.yaml"
    else
        die "no example config found in $SOURCE"
    fi
}

if [ "$ACTION" = example ]; then
    example_config
    exit 0
fi

unit_file() {
    if [ -n "$BUNDLE" ]; then echo "$BUNDLE/parkgate.service"; else echo "$SOURCE/systemd/parkgate.service"; fi
}

# --- helpers -------------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }

use_systemctl() {
    [ "$SYSTEMCTL" != no ] && have systemctl || return 1
    if [ -z "$R" ]; then [ -d /run/systemd/system ]; else return 0; fi
}

# User database of the target root: the host's for /, ROOT/etc/* otherwise.
user_db() {
    if [ -z "$R" ]; then
        return 0
    elif [ -f "$R/etc/passwd" ] && [ -f "$R/etc/group" ]; then
        return 0
    fi
    return 1
}
user_exists() {
    if [ -z "$R" ]; then getent passwd "$1" >/dev/null; else grep -q "^$1:" "$R/etc/passwd"; fi
}
group_exists() {
    if [ -z "$R" ]; then getent group "$1" >/dev/null; else grep -q "^$1:" "$R/etc/group"; fi
}
prefix_args() { if [ -n "$R" ]; then echo "--prefix $R"; fi; }
# Numeric ids from the target root's files, so chown works in a throwaway root too.
uid_of() { if [ -z "$R" ]; then id -u "$1"; else awk -F: -v u="$1" '$1==u{print $3}' "$R/etc/passwd"; fi; }
gid_of() { if [ -z "$R" ]; then getent group "$1" | cut -d: -f3; else awk -F: -v g="$1" '$1==g{print $3}' "$R/etc/group"; fi; }

python_check() {
    have "$PYTHON" || [ -x "$PYTHON" ] || die "$PYTHON not found: apt-get install python3 python3-venv"
    "$PYTHON" - <<'EOF' || die "parkgate needs Python >= 3.11 with venv (Debian 12 / Raspberry Pi OS bookworm or newer): apt-get install python3-venv"
import sys, venv, ensurepip  # noqa: F401 - python3-venv brings ensurepip on Debian
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF
}

# The platform wheels must be built for: a 32-bit userland on a 64-bit Pi kernel reports
# aarch64 from uname but needs armv7l wheels.
python_platform() {
    "$PYTHON" -c 'import platform,struct
m=platform.machine(); bits=struct.calcsize("P")*8
print({("aarch64",32):"armv7l",("arm64",32):"armv7l",("x86_64",32):"i686"}.get((m,bits),m))'
}
python_tag() { "$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")'; }

manifest() { sed -n "s/^$1=//p" "$BUNDLE/MANIFEST.txt" | head -n1; }

# --- rollback ------------------------------------------------------------------------
if [ "$ACTION" = rollback ]; then
    [ -L "$OPT/venv.previous" ] || die "no previous version to roll back to"
    prev=$(readlink "$OPT/venv.previous")
    cur=$(readlink "$OPT/venv")
    ln -sfn "$prev" "$OPT/venv.tmp" && mv -T "$OPT/venv.tmp" "$OPT/venv"
    ln -sfn "$cur" "$OPT/venv.tmp" && mv -T "$OPT/venv.tmp" "$OPT/venv.previous"
    say "now running $(basename "$prev") (was $(basename "$cur"))"
    if use_systemctl && [ -z "$R" ] && systemctl is-active --quiet parkgate; then
        systemctl restart parkgate
    fi
    exit 0
fi

# --- preflight -----------------------------------------------------------------------
if [ -z "$R" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or use --root DIR for a throwaway root"
fi
python_check
UNIT_SRC=$(unit_file)
[ -f "$UNIT_SRC" ] || die "unit file not found: $UNIT_SRC"

if [ -n "$BUNDLE" ]; then
    BUNDLE=$(cd "$BUNDLE" && pwd)
    if [ ! -f "$BUNDLE/MANIFEST.txt" ] || [ ! -d "$BUNDLE/wheels" ]; then
        die "$BUNDLE is not a parkgate bundle (no MANIFEST.txt / wheels/)"
    fi
    want_arch=$(manifest arch); want_py=$(manifest python)
    have_arch=$(python_platform); have_py=$(python_tag)
    [ "$want_arch" = "$have_arch" ] || die "bundle is for $want_arch, this $PYTHON runs on $have_arch: build one with build-bundle.sh --arch $have_arch"
    [ "$want_py" = "$have_py" ] || die "bundle is for $want_py, $PYTHON is $have_py: build one with build-bundle.sh --python-version ${have_py#cp3}"
    VERSION=$(manifest version)
    EXTRAS=$(manifest extras)   # none in a bundle older than the OPC UA and BACnet drivers
    # Packages PyPI has no wheel for on this architecture (cffi on armv7l) come as sdists
    # and are compiled here: check for the tools first, rather than fail inside pip.
    NEEDS_BUILD=$(manifest needs_build)
    if [ -n "$NEEDS_BUILD" ]; then
        say "will compile from source: $NEEDS_BUILD"
        headers=$("$PYTHON" -c 'import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))')
        if ! have gcc || [ "$headers" != True ] || { [[ $NEEDS_BUILD == *cffi* ]] && ! [ -e /usr/include/ffi.h ] && ! ls /usr/include/*/ffi.h >/dev/null 2>&1; }; then
            die "compiling $NEEDS_BUILD needs a C compiler and headers: apt-get install gcc python3-dev libffi-dev (from the Debian/Pi OS mirror or its .debs), then run this again"
        fi
    fi
else
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a parkgate source tree (no pyproject.toml)"
    VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$SOURCE/pyproject.toml" | head -n1)
    EXTRAS=opcua,bacnet
fi
SPEC=parkgate${EXTRAS:+[$EXTRAS]}
[ -n "$VERSION" ] || die "cannot tell which version to install"
say "installing parkgate $VERSION into ${ROOT}"

# --- user ----------------------------------------------------------------------------
OWNER=root:root   # who owns the state directory; the service user once it exists
if user_db; then
    if ! group_exists "$USER_NAME"; then
        # shellcheck disable=SC2046 # prefix_args is one option or nothing
        groupadd --system $(prefix_args) "$USER_NAME"
    fi
    if ! user_exists "$USER_NAME"; then
        # shellcheck disable=SC2046
        useradd --system $(prefix_args) --gid "$USER_NAME" --home-dir /var/lib/parkgate \
            --no-create-home --shell /usr/sbin/nologin --comment "parkgate gateway agent" \
            "$USER_NAME"
        say "created system user $USER_NAME"
    fi
    # dialout: serial ports (RS-485 adapters, modem AT ports). bluetooth: BlueZ's D-Bus
    # policy lets this group talk to org.bluez. Only groups that exist on this box.
    for g in dialout bluetooth; do
        if group_exists "$g"; then
            # shellcheck disable=SC2046
            usermod $(prefix_args) -a -G "$g" "$USER_NAME"
        fi
    done
    OWNER="$(uid_of "$USER_NAME"):$(gid_of "$USER_NAME")"
else
    say "no $R/etc/passwd: not creating the user (a staging root); files stay root-owned"
fi
CONF_GROUP=${OWNER#*:}

# --- directories ---------------------------------------------------------------------
install -d -m 0755 "$OPT" "$OPT/venvs" "$UNIT_DIR"
install -d -m 0750 "$ETC"
install -d -m 0750 "$STATE"
if [ "$(id -u)" = 0 ]; then
    chown "root:$CONF_GROUP" "$ETC"
    chown "$OWNER" "$STATE"
fi

# --- venv ----------------------------------------------------------------------------
WORK=$(mktemp -d)
cleanup() {
    rm -rf "$WORK"
    if [ -n "${NEW:-}" ] && [ -d "$NEW" ] && [ "${SWITCHED:-no}" = no ]; then rm -rf "$NEW"; fi
}
trap cleanup EXIT
SWITCHED=no
# A fresh directory every run, even two runs in the same second.
NEW=$(mktemp -d "$OPT/venvs/$VERSION-$(date -u +%Y%m%dT%H%M%SZ)-XXXX")
chmod 0755 "$NEW"

say "creating venv $NEW"
"$PYTHON" -m venv "$NEW"
PIP=("$NEW/bin/python" -m pip --disable-pip-version-check --no-input -q)

if [ -n "$BUNDLE" ]; then
    if ! "${PIP[@]}" install --no-index --find-links "$BUNDLE/wheels" "$SPEC==$VERSION"; then
        [ "$ALLOW_INDEX" = yes ] || die "the bundle lacks a wheel for this box (see MANIFEST.txt); re-run with --allow-index to take the rest from PyPI (needs network and, for source-only packages, a compiler)"
        say "offline install failed; taking what the bundle lacks from PyPI"
        "${PIP[@]}" install --find-links "$BUNDLE/wheels" "$SPEC==$VERSION"
    fi
else
    # Build from a copy: pip would otherwise write build/ and *.egg-info into the checkout.
    mkdir -p "$WORK/src"
    # config/ and hardware-in-loop/: the profiles and the demo's files, data files of the wheel
    for f in pyproject.toml README.md LICENSE gateway drivers config hardware-in-loop; do
        [ -e "$SOURCE/$f" ] && cp -r "$SOURCE/$f" "$WORK/src/"
    done
    find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
    "${PIP[@]}" install "$WORK/src${EXTRAS:+[$EXTRAS]}"
fi
"$NEW/bin/parkgate" version >/dev/null || die "the new venv does not run: $NEW/bin/parkgate version failed"
# The optional drivers' libraries must load too (they are imported only when a config has
# such a device, which may be months from now): the driver modules that import them.
MODULES=()
for extra in ${EXTRAS//,/ }; do
    case $extra in
        opcua) MODULES+=(drivers.opcua.driver) ;;     # asyncua
        bacnet) MODULES+=(drivers.bacnet.link) ;;     # bacpypes3
    esac
done
if [ "${#MODULES[@]}" -gt 0 ]; then
    "$NEW/bin/python" -c 'import importlib, sys
for m in sys.argv[1:]:
    importlib.import_module(m)' "${MODULES[@]}" \
        || die "the new venv cannot load its drivers (${MODULES[*]}): see above"
fi

# Meter profiles (config/profiles/*.yaml) are looked up beside the installed packages,
# in site-packages/config/profiles, but the wheel does not carry them yet: put this
# version's copy there, so they are upgraded and rolled back with the venv. Site-local
# profiles belong in /etc/parkgate/profiles, which is searched first.
if [ -n "$BUNDLE" ]; then PROFILES=$BUNDLE/profiles; else PROFILES=$SOURCE/config/profiles; fi
SITE=$("$NEW/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -d "$SITE/config/profiles" ] && [ -d "$PROFILES" ]; then
    install -d -m 0755 "$SITE/config/profiles"
    install -m 0644 "$PROFILES"/*.yaml "$SITE/config/profiles/"
fi

# The units run Python with -OO (PYTHONOPTIMIZE=2) and PYTHONPYCACHEPREFIX=$OPT/venv/pycache:
# compile that bytecode now, for the venv and for the standard library, as the services
# will look for it (under the paths they import from: the console scripts run this venv's
# own python, so its real directory). Read-only for the service; switched and rolled back
# with the venv. A failure here costs start-up time and memory, not correctness.
say "compiling bytecode (-OO) into $NEW/pycache"
STDLIB=$("$NEW/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
if ! PYTHONPYCACHEPREFIX="$NEW/pycache" "$NEW/bin/python" -OO -m compileall -q -j 0 \
        -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip|pydoc_data|site-packages|dist-packages)/' \
        "$STDLIB" >/dev/null \
   || ! PYTHONPYCACHEPREFIX="$NEW/pycache" "$NEW/bin/python" -OO -m compileall -q -j 0 \
        -x '/(tests?)/' "$SITE" >/dev/null; then
    say "warning: some modules did not compile; they will be compiled in memory at each start"
fi

# --- config --------------------------------------------------------------------------
CONFIG=$ETC/parkgate.yaml
example_config > "$ETC/parkgate.yaml.example"
chmod 0640 "$ETC/parkgate.yaml.example"
if [ -f "$CONFIG" ]; then
    # An upgrade must not switch to a version that rejects the running config.
    if ! out=$("$NEW/bin/parkgate" check "$CONFIG" 2>&1); then
        echo "$out" >&2
        if [ "$FORCE" = yes ]; then
            say "warning: parkgate $VERSION rejects $CONFIG; installing anyway (--force)"
        else
            die "parkgate $VERSION rejects $CONFIG (above); fix it or use --force. Nothing was changed."
        fi
    fi
    say "kept $CONFIG (new example: $ETC/parkgate.yaml.example)"
    # Older installs (or an engineer's cp) may have left it world-readable, passwords and
    # all: only root and the service's group read it from now on.
    mode=$(stat -c %a "$CONFIG")
    if [ $((8#$mode & 8#027)) -ne 0 ]; then
        chmod 0640 "$CONFIG"
        say "tightened $CONFIG from mode $mode to 0640 (root and group $USER_NAME only): it may hold passwords"
    fi
else
    cp "$ETC/parkgate.yaml.example" "$CONFIG"
    chmod 0640 "$CONFIG"
    say "installed example config $CONFIG: edit it before starting"
fi
if [ "$(id -u)" = 0 ]; then
    chown "root:$CONF_GROUP" "$CONFIG" "$ETC/parkgate.yaml.example"
fi

# --- switch --------------------------------------------------------------------------
OLD=
if [ -L "$OPT/venv" ]; then OLD=$(readlink "$OPT/venv"); fi
ln -sfn "venvs/$(basename "$NEW")" "$OPT/venv.tmp"
mv -T "$OPT/venv.tmp" "$OPT/venv"
SWITCHED=yes
if [ -n "$OLD" ]; then
    ln -sfn "$OLD" "$OPT/venv.tmp" && mv -T "$OPT/venv.tmp" "$OPT/venv.previous"
fi
# Keep the current and the previous venv (for --rollback), remove older ones.
for d in "$OPT"/venvs/*; do
    b=venvs/$(basename "$d")
    if [ "$b" != "$(readlink "$OPT/venv")" ] && [ "$b" != "$(readlink "$OPT/venv.previous" 2>/dev/null || true)" ]; then
        rm -rf "$d"
    fi
done

install -m 0644 "$UNIT_SRC" "$UNIT_DIR/parkgate.service"
if [ -n "$BUNDLE" ] && [ -f "$BUNDLE/README.md" ]; then
    install -m 0644 "$BUNDLE/README.md" "$OPT/README.md"
elif [ -f "$SOURCE/systemd/README.md" ]; then
    install -m 0644 "$SOURCE/systemd/README.md" "$OPT/README.md"
fi
say "installed $UNIT_DIR/parkgate.service and $OPT/venv -> $(readlink "$OPT/venv")"

# --- systemd -------------------------------------------------------------------------
if use_systemctl; then
    if [ -z "$R" ]; then
        systemctl daemon-reload
        systemctl enable --quiet parkgate.service
        if systemctl is-active --quiet parkgate.service; then
            say "restarting the running service on the new version"
            systemctl restart parkgate.service
        elif [ "$START" = yes ]; then
            systemctl start parkgate.service
        else
            say "next: edit $CONFIG, then: parkgate check $CONFIG && systemctl start parkgate"
        fi
    else
        systemctl --root="$R" enable --quiet parkgate.service
    fi
elif [ "$SYSTEMCTL" != no ]; then
    # No systemd running here: a chroot, or an SD card image being prepared. Enable the
    # unit offline all the same, so the image boots into a running gateway; without
    # systemctl, make the link its [Install] section asks for (WantedBy=multi-user.target).
    if have systemctl; then
        systemctl --root="${R:-/}" enable --quiet parkgate.service
    else
        install -d -m 0755 "$UNIT_DIR/multi-user.target.wants"
        ln -sfn /etc/systemd/system/parkgate.service \
            "$UNIT_DIR/multi-user.target.wants/parkgate.service"
    fi
    say "enabled parkgate.service without a running systemd (a chroot or an image):" \
        "it starts at the next boot"
fi
say "done: parkgate $VERSION"
