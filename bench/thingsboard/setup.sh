#!/usr/bin/env bash
# Installs ThingsBoard IoT Gateway (PyPI: thingsboard-gateway) into bench/.tb-venv for
# bench/vs_thingsboard.py. A venv of its own: never into the project's .venv (it pins
# pymodbus 3.9.2, an older version than parkgate's). Its Modbus connector would pip-install
# pymodbus, pyserial and pyserial-asyncio at its first start; installed here up front so the
# benchmark measures the gateway, not pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
version=${TB_GATEWAY_VERSION:-3.8.5}
if [ ! -x .tb-venv/bin/python ]; then
    "$python" -m venv .tb-venv
fi
.tb-venv/bin/python -m pip install -q --upgrade pip
.tb-venv/bin/python -m pip install -q "thingsboard-gateway==${version}" "pymodbus==3.9.2" \
    pyserial pyserial-asyncio
.tb-venv/bin/python -c 'import thingsboard_gateway, pymodbus; print("thingsboard-gateway",
    thingsboard_gateway.__file__, "pymodbus", pymodbus.__version__)'
