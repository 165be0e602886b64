"""The README demo, exactly: prepare the offline corpus, train `tiny` to completion.

    python -m trainer.prepare --source builtin
    python -m trainer.train model=tiny run_name=demo

(wandb on, offline; data in ./data/builtin, the run in ./runs/demo; nothing else in the cwd.)
This is the slowest trainer test (about 1.5 minutes on an idle 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import PYTHON, REPO

DEMO = [
    [PYTHON, '-m', 'trainer.prepare', '--source', 'builtin'],
    [PYTHON, '-m', 'trainer.train', 'model=tiny', 'run_name=demo'],
]


def test_demo_prepares_the_builtin_corpus_and_trains_tiny_to_the_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE='offline')
    for key in ('SLMJOBS_DATA_ROOT', 'SLMJOBS_DEADLINE', 'WANDB_API_KEY'):
        env.pop(key, None)
    outputs = []
    for cmd in DEMO:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f'{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
        outputs.append(proc.stdout)

    assert 'prepared' in outputs[0] and 'tokens/s' in outputs[0]
    run_dir = tmp_path / 'runs' / 'demo'
    progress = json.loads((run_dir / 'progress.json').read_text())
    assert progress['state'] == 'finished' and progress['step'] == progress['max_steps'] == 200
    assert (run_dir / 'checkpoints' / 'latest-rank0.pt').resolve().name == 'ep0-ba200-rank0.pt'
    assert list((run_dir / 'wandb').glob('offline-run-*'))
    # It says where everything is, and the model learned something (uniform over 257 ids: 8 bits).
    assert f'run dir {run_dir}' in outputs[1] and 'checkpoint' in outputs[1]
    assert progress['loss'] / 0.6931 < 5.0
    assert sorted(os.listdir(tmp_path)) == ['data', 'runs']  # no outputs/, .hydra/, wandb/ in the cwd
