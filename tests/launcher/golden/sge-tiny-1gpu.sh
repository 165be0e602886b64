#!/bin/bash
#$ -N golden-tiny-1
#$ -o /runs/golden-tiny-1/logs/link-001.log
#$ -j y
#$ -wd /home/tester/project
#$ -l h_rt=12:00:00
#$ -l gpus=1
#$ -pe omp 1
# Rendered by slmjobs from the run's run.yaml: the exact script submitted for one link.

# The deadline is taken first, before anything slow (module loads) runs.
export SLMJOBS_JOB_START="$(date +%s)"
WALLTIME_SECONDS=43200
HANDOFF_MARGIN=300
export SLMJOBS_DEADLINE=$(( SLMJOBS_JOB_START + WALLTIME_SECONDS - HANDOFF_MARGIN ))
export SLMJOBS_LINK=1
RUN_NAME=golden-tiny-1
RUN_DIR=/runs/golden-tiny-1
LINK_TAG=001
SHM_HOST=$(hostname)
export SLMJOBS_SHM_FILE="$RUN_DIR/logs/link-$LINK_TAG.$SHM_HOST.shm"

# Grid Engine sends SIGUSR1 (s_rt) and SIGUSR2 (-notify, qdel) to the whole process group, and
# a bash that does not handle them dies (FINDINGS 3d); a site's terminate_method may send SIGTERM
# the same way. Ignore them here, so this wrapper and the composer launcher live on to record the
# hand-off; the trainer installs its own handlers (stop at a batch boundary, checkpoint, exit 75).
trap '' USR1 USR2 TERM

export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
# The CPUs the scheduler granted (data preparation uses that many, never a node's whole count).
SLOTS_VARIABLE=NSLOTS
if [ -n "${!SLOTS_VARIABLE:-}" ]; then export SLMJOBS_CPUS="${!SLOTS_VARIABLE}"; fi
export SLMJOBS_DATA_ROOT=/home/tester/slmjobs/data
# The same Python as the launcher; its bin dir first on PATH so `composer` resolves to it.
SLMJOBS_PYTHON=/opt/venv/bin/python
export PATH=/opt/venv/bin:"$PATH"
export SLMJOBS_PYTHON
cd /home/tester/project || exit 1

SCHEDULER_ID_VARIABLE=JOB_ID  # where this scheduler puts the job's id
echo "slmjobs: run $RUN_NAME link $SLMJOBS_LINK job ${SCHEDULER_ID_VARIABLE:+${!SCHEDULER_ID_VARIABLE:-?}} on $(hostname) at $(date), deadline $(date -d "@$SLMJOBS_DEADLINE" 2>/dev/null)"
if [ -z "$SLMJOBS_PYTHON" ] || ! command -v composer >/dev/null; then
    echo "slmjobs: python (${SLMJOBS_PYTHON:-not found}) or composer not found on PATH=$PATH" >&2
fi

# Chain hook: records `started`, applies the guards and submits the successor held on this job.
# Exit 3: the run is finished or stopped, nothing to do.
"$SLMJOBS_PYTHON" -m slmjobs.chain begin "$RUN_DIR" "$SLMJOBS_LINK"
begin_status=$?
if [ "$begin_status" -eq 3 ]; then
    exit 0
elif [ "$begin_status" -ne 0 ]; then
    echo "slmjobs: chain begin failed (exit $begin_status)" >&2
    exit 1
fi

# Streaming keeps shared memory in /dev/shm/<prefix>_*; the trainer lists its prefixes in
# SLMJOBS_SHM_FILE. Remove exactly those, never another job's: this link's when it ends, and
# those of earlier links of this run that died on this host before they could (h_rt is SIGKILL).
remove_listed_shm() {
    while IFS= read -r prefix; do
        case "$prefix" in
            ''|*[!A-Za-z0-9_]*) continue ;;
        esac
        rm -f /dev/shm/"${prefix%_}"_*
    done < "$1"
    rm -f "$1"
}
for stale in "$RUN_DIR"/logs/link-*."$SHM_HOST".shm; do
    if [ -f "$stale" ]; then remove_listed_shm "$stale"; fi
done

# The worker runs in the background and the script waits for it, so this shell stays responsive.
# One GPU needs no launcher (composer's own imports cost ~8 CPU-seconds of every link's start).
"$SLMJOBS_PYTHON" -m trainer.train \
    model=tiny \
    run_name=golden-tiny-1 \
    run_dir=/runs/golden-tiny-1 \
    train.max_duration=1000ba \
    &
worker=$!
wait "$worker"
status=$?

if [ -f "$SLMJOBS_SHM_FILE" ]; then remove_listed_shm "$SLMJOBS_SHM_FILE"; fi

# Chain hook: records how this link ended; when the run is finished, cancels the held successor.
"$SLMJOBS_PYTHON" -m slmjobs.chain end "$RUN_DIR" "$SLMJOBS_LINK" "$status"

# Never exit 99 (Grid Engine requeues the job) or 100 (error state: dependents never start).
case "$status" in
    99|100) status=1 ;;
esac
exit "$status"
