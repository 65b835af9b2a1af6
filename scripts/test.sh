#!/usr/bin/env bash
# Installs what the tests need and runs them: Debian packages (mosquitto, promtool,
# systemd-analyze) when missing, a virtual environment with parkgate and its test extras,
# then ruff, mypy --strict and pytest. Extra arguments go to pytest.
#
# pytest runs in parallel (pytest-xdist): most tests wait on subprocesses, brokers and
# timers, not the CPU, so PYTEST_WORKERS (default 4) exceeds a 2-core box's cores. Tests
# marked `alone` (rates, latency, CPU) still run with nothing beside them (tests/conftest.py).
# PYTEST_WORKERS=0 runs serially, as does `-p no:xdist` among the extra arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "parkgate needs Python 3.11 or newer (found: $("$python" --version 2>&1))." >&2
    echo "On Debian 12 / Ubuntu 24.04: sudo apt-get install -y python3 python3-venv" >&2
    exit 1
fi

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v useradd >/dev/null 2>&1 || need+=(passwd)          # installer test
command -v gcc >/dev/null 2>&1 || need+=(gcc)                 # offline bundle: cffi from source
[ -e /usr/include/ffi.h ] || ls /usr/include/*/ffi.h >/dev/null 2>&1 || need+=(libffi-dev)
command -v faketime >/dev/null 2>&1 || need+=(faketime)       # wall-clock jump faults
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)   # installer scripts
"$python" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${need[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
workers=${PYTEST_WORKERS:-4}
parallel=()
if [ "$workers" != 0 ] && [[ " $* " != *" -p no:xdist "* ]]; then
    # loadgroup: tests marked xdist_group(name) share one worker (a module's costly fixture).
    # With pytest 9.2 and xdist 3.8 the groups are silently ignored (pytest-xdist#1386, fix
    # in PR #1388): the suite passes spread test by test too, grouping only saves rebuilds.
    parallel=(-n "$workers" --dist loadgroup)
fi
exec .venv/bin/python -m pytest -q "${parallel[@]}" "$@"
