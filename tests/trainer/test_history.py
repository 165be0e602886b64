"""metrics.jsonl on the real worker across links, and `slmjobs plot` of it.

One chain of three worker processes, each with its own SLMJOBS_LINK: link 1 hands off at a
deadline, link 2 is SIGKILLed at a random batch after its first periodic checkpoint (so link 3
trains some steps again), the kill leaves a torn last line in the history, link 3 finishes.
Its history must give, at every step, the loss the uninterrupted run (`reference`) logged, bit
for bit, and the plot must show both link boundaries, told apart.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from support import MAX_STEPS, REPO, Worker, assert_bitwise_equal, checkpoint_step, model_weights
from slmjobs import ledger
from slmjobs.history import current_history, read_records
from slmjobs.rundir import HISTORY_FILE
from slmjobs.plot import DPI, FIGSIZE, RUN_COLORS, link_boundaries

TORN = b'{"event":"train","link":2,"step":1'


@pytest.fixture(scope='module')
def chain(dataset, tmp_path_factory):
    worker = Worker(dataset, tmp_path_factory.mktemp('history'))
    try:
        first = worker.start('chain', 'train.debug_batch_sleep=0.5', wrapper='deadline_in.py',
                             env={'DEADLINE_IN': 8, 'SLMJOBS_LINK': 1})
        assert first.wait() == 75, first.output()[-3000:]
        run_dir = first.run_dir
        handed_off_at = checkpoint_step(run_dir)
        first_periodic = (handed_off_at // 4 + 1) * 4  # link 2's first checkpoint
        assert first_periodic < MAX_STEPS - 1, f'link 1 trained too far ({handed_off_at} steps)'
        kill_at = random.randint(first_periodic + 1, MAX_STEPS - 1)
        second = worker.run('chain', run_dir=run_dir, wrapper='kill_at_step.py', expect=None,
                            env={'KILL_AT_STEP': kill_at, 'SLMJOBS_LINK': 2})
        assert second.proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), second.output()[-3000:]
        with open(run_dir / HISTORY_FILE, 'ab') as handle:
            handle.write(TORN)  # what a kill in the middle of a write leaves
        third = worker.run('chain', run_dir=run_dir, env={'SLMJOBS_LINK': 3})
        resumed_at = int(re.search(r'resumed from \S+ at step (\d+)/', third.output()).group(1))
        # how the links ended, written as the chain's `end` hook and successor write it
        for link, how, status in ((1, 'handed_off', 75), (2, 'killed', None), (3, 'finished', 0)):
            ledger.append(run_dir, {'event': 'ended', 'link': link, 'job_id': str(100 + link),
                                    'how': how, 'exit_status': status})
        return SimpleNamespace(run_dir=run_dir, handed_off_at=handed_off_at, kill_at=kill_at,
                               resumed_at=resumed_at)
    finally:
        worker.cleanup()


def train_losses(records: list[dict]) -> dict[int, str]:
    """step -> loss as float.hex (bitwise), each step at most once or the test fails."""
    steps = [r['step'] for r in records if r['event'] == 'train']
    assert len(steps) == len(set(steps)), f'a step counted twice: {steps}'
    return {r['step']: r['loss'].hex() for r in records if r['event'] == 'train'}


def test_a_chain_with_a_hand_off_and_a_hard_kill_logs_the_uninterrupted_runs_losses(chain, reference):
    c = chain
    assert c.handed_off_at < c.resumed_at < c.kill_at  # link 3 trained steps again
    want = train_losses(current_history(reference))
    assert sorted(want) == list(range(1, MAX_STEPS + 1))
    records = current_history(c.run_dir)
    assert train_losses(records) == want  # the same loss at every step, bit for bit

    # The rule was exercised: the file still holds link 2's records of the steps link 3 redid.
    raw = read_records(c.run_dir)
    redone = [r['step'] for r in raw if r['event'] == 'train' and r['link'] == 2 and r['step'] > c.resumed_at]
    assert redone == list(range(c.resumed_at + 1, c.kill_at + 1))
    assert {r['step']: r['link'] for r in records if r['event'] == 'train'} == {
        s: 1 if s <= c.handed_off_at else 2 if s <= c.resumed_at else 3 for s in range(1, MAX_STEPS + 1)}
    assert [(r['link'], r['step']) for r in records if r['event'] == 'start'] == [
        (1, 0), (2, c.handed_off_at), (3, c.resumed_at)]

    # The torn line stayed a line of its own, skipped; link 3 started on a fresh line.
    assert TORN in (c.run_dir / HISTORY_FILE).read_bytes().splitlines()

    evals = [(r['step'], r['val_loss'].hex()) for r in records if r['event'] == 'eval']
    assert evals == [(r['step'], r['val_loss'].hex()) for r in current_history(reference)
                     if r['event'] == 'eval'] and len(evals) == 1  # the end-of-training one
    trained = [r for r in records if r['event'] == 'train']
    assert [r['tokens'] for r in trained] == [s * 4 * 32 for s in range(1, MAX_STEPS + 1)]
    hours = [r['train_seconds'] for r in trained]
    assert hours == sorted(hours) and hours[0] > 0  # training time only grows along the history
    assert_bitwise_equal(model_weights(c.run_dir), model_weights(reference))


def slmjobs(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'slmjobs', *args], capture_output=True, text=True,
                          env=env, cwd=REPO)


def tall_columns(png, rgb: str, min_fraction: float) -> list[int]:
    """Columns of the image in which at least `min_fraction` of the pixels have about this colour."""
    pixels = np.asarray(Image.open(png).convert('RGB'), dtype=float)
    target = np.array([int(rgb[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    near = np.linalg.norm(pixels - target, axis=2) < 60
    return [int(x) for x in np.flatnonzero(near.mean(axis=0) >= min_fraction)]


def test_plot_of_the_chain_shows_its_hand_off_and_its_hard_kill(chain, reference, tmp_path):
    c = chain
    done = slmjobs('plot', str(c.run_dir))
    assert done.returncode == 0, done.stderr
    png = c.run_dir / 'plots' / 'loss.png'
    assert done.stdout.strip() == str(png)
    image = Image.open(png)
    assert image.format == 'PNG' and image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    assert np.asarray(image.convert('L'), dtype=float).std() > 10  # not blank

    boundaries = [(r['link'], r['step'], how) for r, how in link_boundaries(c.run_dir, current_history(c.run_dir))]
    assert boundaries == [(2, c.handed_off_at, 'handed_off'), (3, c.resumed_at, 'killed')]
    # In the picture: the hard kill a solid line across the axes, the hand-off a dashed one
    # (about half as many pixels) to its left, both in the run's colour.
    solid = tall_columns(png, RUN_COLORS[0], 0.6)
    dashed = [x for x in tall_columns(png, RUN_COLORS[0], 0.25) if all(abs(x - s) > 3 for s in solid)]
    assert solid and dashed and max(dashed) < min(solid), (solid, dashed)

    for metric, x in (('val_loss', 'tokens'), ('bits_per_byte', 'hours'), ('lr', 'step'),
                      ('tokens_per_sec', 'hours')):
        out = tmp_path / f'{metric}-{x}.png'
        done = slmjobs('plot', str(c.run_dir), '--metric', metric, '--x', x, '-o', str(out))
        assert done.returncode == 0 and done.stdout.strip() == str(out), done.stderr
        assert Image.open(out).size == image.size

    both = tmp_path / 'both.png'
    done = slmjobs('plot', str(c.run_dir), str(reference), '-o', str(both))
    assert done.returncode == 0, done.stderr
    assert tall_columns(both, RUN_COLORS[0], 0.6) and tall_columns(both, RUN_COLORS[1], 0.01)
