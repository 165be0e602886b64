#!/usr/bin/env bash
# The main job on the embedded default: the local backend (no scheduler), the `tiny` model and
# the offline built-in corpus. Sets up .venv, prepares the corpus once, launches the run as a
# chain exactly as on a cluster, follows its logs to the end and shows its status.
# The `demo` profile gives each link two minutes of walltime, and each of the 200 steps is paced
# to last at least 0.5 s (train.debug_batch_sleep: it only sleeps), so the run outlasts its first
# link on any machine: the worker checkpoints before the limit and the next link resumes there.
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
slmjobs launch tiny --cluster demo --name "$name" train.debug_batch_sleep=0.5
slmjobs logs "$name" --follow
slmjobs status "$name"

run_dir=$(slmjobs status "$name" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["run_dir"])')
plot=$(slmjobs plot "$name")
# Where the chain handed over, from the run's ledger (docs/CONTRACTS.md: `ended` events).
handoffs=$(python3 - "$run_dir/jobs.jsonl" <<'PY'
import json, sys
ended = [e for e in map(json.loads, open(sys.argv[1])) if e.get("event") == "ended"]
for e in ended:
    if e["how"] == "handed_off":
        print(f"  link {e['link']} handed off at step {e.get('progress')}, checkpoint saved; "
              f"link {e['link'] + 1} resumed from it")
    elif e["how"] == "finished":
        print(f"  link {e['link']} finished the run at step {e.get('progress')}")
PY
)
cat <<EOM

the chain:
$handoffs
  (the dashed lines in the plot mark those hand-offs)

demo finished: run $name
  checkpoints  $run_dir/checkpoints/  (latest-rank0.pt is the newest)
  logs         $run_dir/logs/link-001.log, link-002.log, ... (one per link)
  metrics      $run_dir/metrics.jsonl (every logged step; plotted in $plot),
               $run_dir/progress.json, and the offline wandb run in $run_dir/wandb/
  ledger       $run_dir/jobs.jsonl
EOM
