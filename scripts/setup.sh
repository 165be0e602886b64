#!/usr/bin/env bash
# Create .venv with slmjobs and its training stack (about 4 minutes and 6.6 GB the first time).
# Usage: bash scripts/setup.sh [--dev]      (--dev adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A fresh Debian has python3 but not always its venv module.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -m pip check
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, composer, streaming; print("torch", torch.__version__, "composer", composer.__version__, "streaming", streaming.__version__)'))"
