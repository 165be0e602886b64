#!/usr/bin/env bash
# The main job on the embedded default: the local backend (no scheduler), the `tiny` model and
# the offline built-in corpus. Sets up .venv, prepares the corpus once, launches the run as a
# chain exactly as on a cluster, follows its log to the end and shows its status.
# Usage: bash scripts/demo.sh        (SLMJOBS_SKIP_SETUP=1 skips the venv step)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${SLMJOBS_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
data_root="${SLMJOBS_DATA_ROOT:-$PWD/data}"

# Byte-level tokenizer, the Python standard library's own prose: no network at all.
if [ ! -f "$data_root/builtin/dataset.json" ]; then
    slmjobs prepare --source builtin --tokenizer bytes --out "$data_root/builtin"
fi

name="demo-$(date +%Y%m%d-%H%M%S)"
slmjobs launch tiny --cluster local --name "$name"
slmjobs logs "$name" --follow
slmjobs status "$name"

run_dir=$(slmjobs status "$name" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["run_dir"])')
plot=$(slmjobs plot "$name")
cat <<EOM

demo finished: run $name
  checkpoints  $run_dir/checkpoints/  (latest-rank0.pt is the newest)
  log          $run_dir/logs/link-001.log
  metrics      $run_dir/metrics.jsonl (every logged step; plotted in $plot),
               $run_dir/progress.json, and the offline wandb run in $run_dir/wandb/
  ledger       $run_dir/jobs.jsonl
EOM
