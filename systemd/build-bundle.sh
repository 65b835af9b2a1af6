#!/usr/bin/env bash
# Build an offline install bundle: every wheel parkgate needs on the target, plus the
# installer, the unit and the example config, in one tarball.
#
#   systemd/build-bundle.sh --arch aarch64            # Pi 3/4/5 with 64-bit OS
#   systemd/build-bundle.sh --arch armv7l             # 32-bit Raspberry Pi OS
#   systemd/build-bundle.sh --arch x86_64 --python-version 3.13 --out dist/
#
# Wheels come from PyPI only (`pip download --platform ... --only-binary=:all:`), at the
# versions one resolution pins for every architecture. A dependency with no wheel for the
# target is built here from its sdist: if that build is pure Python (no compiled code,
# e.g. dbus-fast with SKIP_CYTHON=1) it is retagged py3-none-any and shipped; otherwise
# the sdist and its build requirements are shipped and install.sh compiles it on the
# gateway (cffi on armv7l: needs gcc, python3-dev, libffi-dev there). MANIFEST.txt lists
# both kinds. On the target: tar xzf parkgate-*.tar.gz && sudo ./parkgate-*/install.sh
#
# The bundle carries the gateway's optional drivers too, the extras in EXTRAS below
# (opcua: asyncua; bacnet: bacpypes3, both pure Python), and install.sh installs
# parkgate[EXTRAS] (MANIFEST.txt: extras=). Always, not by option: a driver's library is
# imported only when a config has such a device, so carrying it costs disk, not memory,
# and a site that later adds an OPC UA PLC or a BACnet chiller needs no new bundle and
# no pip. (The `ingest` extra is for the database side, never the gateway.)
set -euo pipefail

PROG=build-bundle.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$(cd "$HERE/.." && pwd)
ARCH=
PYVER=3.11
OUT=$SOURCE/dist
PYTHON=${PYTHON:-python3}
EXTRAS=opcua,bacnet   # optional drivers every bundle carries (see above)
FORCE_SDIST=   # space-separated names to ship as sdist even if a wheel exists (testing)

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --arch) ARCH=${2:?--arch needs a value}; shift 2 ;;
        --arch=*) ARCH=${1#*=}; shift ;;
        --python-version) PYVER=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --python) PYTHON=${2:?}; shift 2 ;;
        --force-sdist) FORCE_SDIST="$FORCE_SDIST ${2:?}"; shift 2 ;;
        --source) SOURCE=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $ARCH in
    aarch64|armv7l|x86_64) ;;
    "") die "--arch aarch64|armv7l|x86_64 is required" ;;
    *) die "unsupported --arch $ARCH (aarch64, armv7l or x86_64)" ;;
esac
case $PYVER in 3.1[1-9]) ;; *) die "--python-version must be 3.11 or newer, got $PYVER" ;; esac
PYTAG=cp${PYVER/./}

# Every glibc a Debian/Pi OS release might have (bookworm 2.36, trixie 2.41): pip does not
# expand manylinux_2_X to the older tags by itself when --platform is given.
PLATFORMS=(--platform "linux_$ARCH" --platform "manylinux2014_$ARCH")
for minor in $(seq 17 41); do PLATFORMS+=(--platform "manylinux_2_${minor}_$ARCH"); done
TARGET=("${PLATFORMS[@]}" --python-version "$PYVER" --implementation cp
        --abi "$PYTAG" --abi abi3 --abi none --only-binary=:all:)
PIP=("$PYTHON" -m pip --disable-pip-version-check --no-input)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
WHEELS=$WORK/wheels
mkdir -p "$WHEELS" "$WORK/src" "$WORK/sdist" "$WORK/built"

# 1. parkgate itself (pure Python), from a copy so the checkout gets no build/ litter.
# config/ and hardware-in-loop/: the profiles and the demo's files, data files of the wheel
for f in pyproject.toml README.md LICENSE gateway drivers config hardware-in-loop; do
    [ -e "$SOURCE/$f" ] && cp -r "$SOURCE/$f" "$WORK/src/"
done
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
say "building the parkgate wheel"
"${PIP[@]}" wheel -q --no-deps -w "$WHEELS" "$WORK/src" >&2
PG_WHEEL=$(find "$WHEELS" -name 'parkgate-*.whl' | head -n1)
VERSION=$(basename "$PG_WHEEL" | cut -d- -f2)

# Retag a wheel without compiled code as py3-none-any (WHEEL tags and RECORD rewritten).
retag_pure() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import base64, hashlib, sys, zipfile
from pathlib import Path
src, outdir = Path(sys.argv[1]), Path(sys.argv[2])
zin = zipfile.ZipFile(src)
names = zin.namelist()
if any(n.endswith((".so", ".pyd", ".dylib")) for n in names):
    sys.exit(f"{src.name} contains compiled code; it cannot be shipped for another platform")
dist, version = src.name.split("-")[:2]
out = outdir / f"{dist}-{version}-py3-none-any.whl"
info = f"{dist}-{version}.dist-info/"
files = {}
for n in names:
    data = zin.read(n)
    if n == info + "WHEEL":
        lines = [l for l in data.decode().splitlines()
                 if not l.startswith(("Tag:", "Root-Is-Purelib:"))]
        lines += ["Root-Is-Purelib: true", "Tag: py3-none-any"]
        data = ("\n".join(lines) + "\n").encode()
    files[n] = data
record = []
for n, data in files.items():
    if n == info + "RECORD":
        continue
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{n},sha256={digest},{len(data)}")
record.append(f"{info}RECORD,,")
files[info + "RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
    for n, data in files.items():
        zout.writestr(n, data)
print(out)
EOF
}

# 2. the dependency closure, pinned: resolved once for manylinux x86_64, where every
#    dependency has wheels, so every architecture gets the same versions.
say "resolving dependencies for Python $PYVER"
REF=(--platform manylinux2014_x86_64 --platform linux_x86_64)
for minor in $(seq 17 41); do REF+=(--platform "manylinux_2_${minor}_x86_64"); done
"${PIP[@]}" install -q --dry-run --ignore-installed --report "$WORK/closure.json" \
    "${REF[@]}" --python-version "$PYVER" --implementation cp --abi "$PYTAG" --abi abi3 \
    --abi none --only-binary=:all: --target "$WORK/ref" "${PG_WHEEL}[$EXTRAS]" >&2 \
    || die "cannot resolve parkgate's dependencies"
mapfile -t PINS < <("$PYTHON" -c '
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    m = item["metadata"]
    if m["name"].lower() != "parkgate":
        print(m["name"] + "==" + m["version"])' "$WORK/closure.json")

# 3. a wheel for the target for each; where PyPI has none, a pure-Python build of the sdist
#    (e.g. dbus-fast with SKIP_CYTHON=1), else the sdist itself plus what builds it, to be
#    compiled on the gateway (install.sh checks for the compiler first).
BUILT_PURE=()
NEEDS_BUILD=()
MISSING=()
# Download every wheel in one pip call; a pin pip names as missing is set aside and the
# rest tried again (pip stops at the first miss), so a gap costs one call, not one each.
REST=()
for pin in "${PINS[@]}"; do
    if [[ " $FORCE_SDIST " == *" ${pin%%==*} "* ]]; then MISSING+=("$pin"); else REST+=("$pin"); fi
done
while [ "${#REST[@]}" -gt 0 ]; do
    if "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$WHEELS" "${REST[@]}" \
            2>"$WORK/err"; then
        break
    fi
    miss=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$WORK/err" | head -n1)
    if [ -z "$miss" ] || [[ " ${REST[*]} " != *" $miss "* ]]; then
        cat "$WORK/err" >&2
        die "pip download failed for $ARCH (see above)"
    fi
    MISSING+=("$miss")
    KEEP=()
    for pin in "${REST[@]}"; do [ "$pin" != "$miss" ] && KEEP+=("$pin"); done
    REST=("${KEEP[@]+"${KEEP[@]}"}")
done
for pin in "${MISSING[@]+"${MISSING[@]}"}"; do
    name=${pin%%==*}
    say "no $ARCH wheel on PyPI for $pin: building it from source"
    rm -rf "${WORK:?}/built" "${WORK:?}/sdist" && mkdir -p "$WORK/built" "$WORK/sdist"
    "${PIP[@]}" download -q --no-deps --no-binary=:all: -d "$WORK/sdist" "$pin" >&2 \
        || die "$pin has neither an $ARCH wheel nor an sdist on PyPI"
    sdist=$(find "$WORK/sdist" -type f | head -n1)
    # SKIP_CYTHON=1: dbus-fast (and its sister projects) then skip their optional Cython
    # speed-ups and build a pure-Python wheel.
    # Hand-written C, C++ or Rust in the sdist: it cannot be built pure, do not try.
    compiled=$(tar tzf "$sdist" 2>/dev/null | grep -cE '\.(c|cc|cpp|rs)$|/Cargo\.toml$' || true)
    if [[ " $FORCE_SDIST " != *" $name "* ]] && [ "$compiled" = 0 ] && \
        SKIP_CYTHON=1 "${PIP[@]}" wheel -q --no-deps -w "$WORK/built" "$sdist" >&2 && \
        retag_pure "$(find "$WORK/built" -name '*.whl' | head -n1)" "$WHEELS" >/dev/null 2>&1; then
        BUILT_PURE+=("$pin")
        continue
    fi
    say "$pin has compiled code: shipping its sdist, built on the gateway"
    cp "$sdist" "$WHEELS/"
    NEEDS_BUILD+=("$pin")
    # its build requirements, as wheels for the target (setuptools and friends are pure)
    mapfile -t BREQ < <("$PYTHON" - "$sdist" <<'PY'
import sys, tarfile, tomllib
with tarfile.open(sys.argv[1]) as tf:
    member = next(m for m in tf.getmembers() if m.name.count("/") == 1
                  and m.name.endswith("/pyproject.toml"))
    doc = tomllib.load(tf.extractfile(member))
for req in doc.get("build-system", {}).get("requires", ["setuptools", "wheel"]):
    print(req)
PY
)
    if [ "${#BREQ[@]}" -gt 0 ]; then
        "${PIP[@]}" download -q "${TARGET[@]}" -d "$WHEELS" "${BREQ[@]}" >&2 \
            || die "cannot fetch the build requirements of $pin: ${BREQ[*]}"
    fi
done

say "checking the bundle resolves offline"
if [ "${#NEEDS_BUILD[@]}" -eq 0 ]; then
    "${PIP[@]}" install -q --dry-run --ignore-installed --no-index --find-links "$WHEELS" \
        "${TARGET[@]}" --target "$WORK/dry" "parkgate[$EXTRAS]==$VERSION" >&2 \
        || die "the wheelhouse does not resolve offline"
else
    # pip resolves for another platform from wheels only; check every other pin is there.
    WHEEL_PINS=()
    for pin in "${PINS[@]}"; do
        [[ " ${NEEDS_BUILD[*]} " == *" $pin "* ]] || WHEEL_PINS+=("$pin")
    done
    "${PIP[@]}" download -q --no-deps --no-index --find-links "$WHEELS" "${TARGET[@]}" \
        -d "$WORK/dry" "${WHEEL_PINS[@]}" >&2 || die "the wheelhouse lacks a wheel (above)"
fi

# 4. assemble.
NAME=parkgate-$VERSION-$ARCH-$PYTAG
B=$WORK/$NAME
mkdir -p "$B"
mv "$WHEELS" "$B/wheels"
install -m 0755 "$HERE/install.sh" "$B/install.sh"
install -m 0644 "$HERE/parkgate.service" "$B/parkgate.service"
[ -f "$HERE/README.md" ] && install -m 0644 "$HERE/README.md" "$B/README.md"
if [ -d "$SOURCE/config/profiles" ]; then
    install -d "$B/profiles"
    install -m 0644 "$SOURCE/config/profiles"/*.yaml "$B/profiles/"
fi
"$HERE/install.sh" --source "$SOURCE" --print-example-config > "$B/parkgate.yaml.example"
{
    echo "version=$VERSION"
    echo "arch=$ARCH"
    echo "python=$PYTAG"
    echo "extras=$EXTRAS"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "built_pure=${BUILT_PURE[*]:-}"
    echo "needs_build=${NEEDS_BUILD[*]:-}"
    echo "# sha256 of every wheel"
    (cd "$B/wheels" && sha256sum -- *.whl)
} > "$B/MANIFEST.txt"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tar -C "$WORK" -czf "$OUT/$NAME.tar.gz" "$NAME"
say "wrote $OUT/$NAME.tar.gz ($(find "$B/wheels" -name '*.whl' | wc -l) wheels; built pure: ${BUILT_PURE[*]:-none}; built on the gateway: ${NEEDS_BUILD[*]:-none})"
echo "$OUT/$NAME.tar.gz"
