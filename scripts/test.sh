#!/usr/bin/env bash
# Set up everything the test suite needs and run it: the venv, a real single-node Grid Engine
# (Debian's gridengine packages, started by scripts/sge-up.sh), a real single-host SLURM
# (Debian's slurm packages with slurmdbd, started by scripts/slurm-up.sh), a local mail delivery
# (scripts/mail-up.sh), then pytest. Any failure fails.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bash scripts/setup.sh --dev
# tmux: the `status --watch` tests drive a real terminal
command -v tmux >/dev/null || { as_root apt-get update -q &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux; }
as_root bash scripts/sge-up.sh up
qstat -f >/dev/null   # the cluster answers, or we stop here
as_root bash scripts/slurm-up.sh up
sinfo -h >/dev/null && sacct -n -X -S now >/dev/null   # SLURM and its accounting answer
# mailx and a local exim4: the one mail a run sends when it is over is delivered for real
as_root bash scripts/mail-up.sh

# Four pytest workers, modules side by side (tests/conftest.py SCHEDULER_LANES: those that use a
# real scheduler still run one at a time in their lane); chains mostly wait, so this is not
# CPU-bound. SLMJOBS_TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${SLMJOBS_TEST_WORKERS:-4}" --dist loadfile "$@"
