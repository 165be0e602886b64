"""Exact resume and the hand-off, on the real worker (subprocesses, CPU, a very small model).

Every interrupted run is compared with one uninterrupted run (`reference`): the final weights
must be bitwise equal, and no batch may be trained twice.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import time

import pytest

from support import (MAX_STEPS, assert_bitwise_equal, checkpoint_step, model_weights,
                     read_progress)

CONTRACT_FIELDS = {
    'run_name', 'state', 'link', 'step', 'max_steps', 'tokens_seen', 'loss', 'tokens_per_sec',
    'steps_per_sec', 'checkpoint_step', 'checkpoint_path', 'checkpoint_time', 'last_save_seconds',
    'link_started_at', 'first_step_at', 'deadline', 'wandb_id', 'updated_at'}


def resumed_from(run) -> int:
    m = re.search(r'resumed from \S+ at step (\d+)/', run.output())
    assert m, f'no resume line:\n{run.output()[-3000:]}'
    return int(m.group(1))


def test_reference_run_finishes_with_contract_progress(reference):
    progress = read_progress(reference)
    assert set(progress) == CONTRACT_FIELDS
    assert progress['state'] == 'finished'
    assert progress['step'] == progress['max_steps'] == progress['checkpoint_step'] == MAX_STEPS
    assert progress['tokens_seen'] == MAX_STEPS * 4 * 32
    assert checkpoint_step(reference) == MAX_STEPS


def test_sigkill_at_a_random_batch_and_during_a_save_resumes_bitwise(worker, reference):
    # Any batch after the first periodic checkpoint (step 4): seeing step 5 means it is written.
    kill_at = random.randint(5, MAX_STEPS - 8)
    first = worker.start('killed', 'train.debug_batch_sleep=0.1')
    first.wait_for_step(kill_at)
    first.signal_group(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL or first.proc.returncode == 128 + signal.SIGKILL
    resume_at = checkpoint_step(first.run_dir)
    assert 4 <= resume_at <= max(first.steps()), f'killed after step {kill_at}'

    # Second link: SIGKILLed in the middle of writing its next periodic checkpoint.
    torn_step = (resume_at // 4 + 1) * 4
    second = worker.run('killed', run_dir=first.run_dir, wrapper='kill_in_save.py',
                        env={'KILL_IN_SAVE_STEP': torn_step}, expect=None)
    assert second.proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), second.output()[-3000:]
    assert 'kill_in_save: killed while writing' in second.output()
    torn = first.run_dir / 'checkpoints' / f'ep0-ba{torn_step}-rank0.pt'
    assert torn.exists() and checkpoint_step(first.run_dir) == resume_at  # latest still the old one

    third = worker.run('killed', run_dir=first.run_dir)
    assert resumed_from(third) == resume_at
    assert third.steps()[0] == resume_at + 1 and third.steps()[-1] == MAX_STEPS
    assert_bitwise_equal(model_weights(first.run_dir), model_weights(reference))


def test_deadline_hands_off_before_it_and_resumes_bitwise(worker, reference):
    # Slow batches (0.5 s, 12 s for the whole run) and a deadline 8 s after the heavy imports.
    first = worker.start('deadline', 'train.debug_batch_sleep=0.5', wrapper='deadline_in.py',
                         env={'DEADLINE_IN': 8, 'SLMJOBS_LINK': 1})
    assert first.wait() == 75, first.output()[-3000:]
    ended = time.time()
    deadline = read_progress(first.run_dir)['deadline']
    assert ended < deadline, f'exited {ended - deadline:.1f} s after the deadline'
    trained = first.steps()
    assert 0 < trained[-1] < MAX_STEPS
    assert checkpoint_step(first.run_dir) == trained[-1]  # checkpoint at its last step
    progress = read_progress(first.run_dir)
    assert progress['state'] == 'handed_off' and progress['checkpoint_step'] == trained[-1]
    assert progress['link'] == 1
    assert 'handed off at step' in first.output() and 'deadline in' in first.output()

    second = worker.run('deadline', run_dir=first.run_dir)
    assert resumed_from(second) == trained[-1]
    assert trained + second.steps() == list(range(1, MAX_STEPS + 1))  # zero batches recomputed
    assert read_progress(first.run_dir)['state'] == 'finished'
    assert_bitwise_equal(model_weights(first.run_dir), model_weights(reference))


# Grid Engine's s_rt sends SIGUSR1 to the job's process group; SLURM's --time sends SIGTERM to
# every process of the job (docs/SLURM.md), which Composer's own handler would turn into an exit
# without a checkpoint.
@pytest.mark.parametrize('sig', [signal.SIGUSR1, signal.SIGTERM], ids=['usr1', 'term'])
def test_a_signal_to_the_process_group_hands_off_and_resumes_bitwise(worker, reference, tmp_path,
                                                                     sig):
    shm_file = tmp_path / 'shm-prefixes'
    name = signal.Signals(sig).name.lower()
    first = worker.start(name, 'train.debug_batch_sleep=0.3', env={'SLMJOBS_SHM_FILE': shm_file})
    first.wait_for_step(5)
    first.signal_group(sig)  # the bash wrapper ignores it, as the job script does
    assert first.wait() == 75, first.output()[-3000:]
    trained = first.steps()
    assert trained[-1] < MAX_STEPS
    assert checkpoint_step(first.run_dir) == trained[-1]
    assert f'signal {signal.Signals(sig).name}' in first.output()
    assert 'Traceback' not in first.output()  # no helper process died of the signal
    prefixes = shm_file.read_text().split()
    assert prefixes and all(re.fullmatch(r'\d{6}', p) for p in prefixes)

    second = worker.run(name, run_dir=first.run_dir)
    assert trained + second.steps() == list(range(1, MAX_STEPS + 1))
    assert_bitwise_equal(model_weights(first.run_dir), model_weights(reference))


def test_resume_reads_one_batch_wherever_it_resumes(worker, reference):
    """Resuming deep into the epoch costs the data loader what resuming near its start costs:
    one batch of samples, no replay of the batches before it."""
    fetched = {}
    for step in (4, 20):
        run_dir = worker.root / f'from-{step}'
        (run_dir / 'checkpoints').mkdir(parents=True)
        shutil.copy(reference / 'checkpoints' / f'ep0-ba{step}-rank0.pt', run_dir / 'checkpoints')
        (run_dir / 'checkpoints' / 'latest-rank0.pt').symlink_to(f'ep0-ba{step}-rank0.pt')
        run = worker.run(f'from-{step}', run_dir=run_dir)
        m = re.search(r'data: (\d+) samples read to start this link at step (\d+)', run.output())
        assert m and int(m.group(2)) == step, run.output()[-3000:]
        fetched[step] = int(m.group(1))
        assert run.steps()[0] == step + 1
        assert_bitwise_equal(model_weights(run_dir), model_weights(reference))
    assert fetched == {4: 4, 20: 4}  # the per-rank batch size, in both cases
