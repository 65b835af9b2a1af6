#!/usr/bin/env bash
# Runs the gateway end to end on local emulated devices: installs mosquitto if missing,
# sets up a virtual environment with parkgate, then `parkgate demo` (Ctrl-C to stop).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
"$python" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/parkgate demo "$@"
