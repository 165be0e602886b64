"""The `eval` run kind (slmjobs/kinds/eval.py): `slmjobs eval` and `eval.after` at a training
launch, on the local backend, with the worker's scorer for real.

End to end, inside a network namespace with no interface but loopback (`unshare -n`: every job
the local backend starts inherits it; no route leaves the machine), a training run with eval.every scores HellaSwag while it trains,
and eval.after=[hellaswag] starts an eval run when it finishes; that job scores the final
checkpoint offline into the training run's evals.jsonl; status shows the scores of both runs and
the plot draws them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'trainer'))
from eval_items import synthetic_items, tiny_run, write_items  # noqa: E402

TINY = ['model.n_layer=1', 'model.n_head=2', 'model.n_embd=32', 'model.block_size=128', 'data.num_workers=0',
        'train.global_batch_size=4', 'train.warmup_steps=2', 'train.eval_every=8', 'train.eval_batches=2',
        'train.max_steps=16', 'checkpoint.save_every_batches=8', 'wandb.enabled=false', 'data.path=small']


def slmjobs(*args: str, root: Path, cwd: Path, offline: bool = False, timeout: float = 120):
    env = dict(os.environ, PYTHONPATH=str(REPO), SLMJOBS_DATA_ROOT=str(root), WANDB_MODE='offline')
    cmd = [sys.executable, '-m', 'slmjobs', *args]
    if offline:  # a new network namespace: loopback only (torch's gloo process group binds 127.0.0.1)
        cmd = ['unshare', '--net', 'sh', '-c', 'ip link set lo up && exec "$@"', 'sh', *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A prepared dataset and fetched (synthetic) HellaSwag items, as a login node leaves them."""
    from trainer.prepare import prepare_builtin
    root = tmp_path / 'data-root'
    prepare_builtin(root / 'small', seq_len=32, max_documents=60)
    items = write_items(tmp_path / 'items.jsonl', synthetic_items(9, seed=41))
    proc = slmjobs('eval-data', 'fetch', 'hellaswag', '--file', str(items), root=root, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return root


def test_eval_dry_run_renders_the_scorer_offline_on_the_cpu(tmp_path, data_root):
    runs = Path(os.environ['SLMJOBS_RUNS_ROOT'])
    target = tiny_run(runs / 'trained', block_size=96)
    (target / 'run.yaml').write_text('name: trained\nmodel: tiny\n')
    proc = slmjobs('eval', 'trained', '--gpus', '0', '--cluster', 'local', '--dry-run', root=data_root, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.replace(' \\\n    ', ' ')  # the template puts one argument per line
    for needle in (f'"$SLMJOBS_PYTHON" -m trainer.evaluate {target} --tasks hellaswag --device cpu ',
                   'export HF_HUB_OFFLINE=1\n', 'export HF_DATASETS_OFFLINE=1\n'):
        assert needle in command, needle
    assert not [p for p in runs.iterdir() if p.name != 'trained']  # a dry run writes nothing


@pytest.mark.parametrize('args,needle', [
    (['--hf-dir', '/nonexistent'], 'no config.json'),
    ([], 'give a RUN or --hf-dir'),
    (['trained', '--checkpoint', 'x.pt', '--all-kept'], '--all-kept'),
    (['trained', '--tasks', 'hella swag'], "--tasks 'hella swag'"),
])
def test_bad_eval_requests_are_one_line_and_leave_nothing(tmp_path, data_root, args, needle):
    runs = Path(os.environ['SLMJOBS_RUNS_ROOT'])
    target = tiny_run(runs / 'trained')
    (target / 'run.yaml').write_text('name: trained\nmodel: tiny\n')
    proc = slmjobs('eval', *args, '--cluster', 'local', root=data_root, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and needle in proc.stderr, proc.stderr
    assert [p.name for p in runs.iterdir()] == ['trained']


def test_an_eval_without_the_items_is_refused_at_launch(tmp_path):
    runs = Path(os.environ['SLMJOBS_RUNS_ROOT'])
    target = tiny_run(runs / 'trained')
    (target / 'run.yaml').write_text('name: trained\nmodel: tiny\n')
    proc = slmjobs('eval', 'trained', '--cluster', 'local', root=tmp_path / 'empty', cwd=tmp_path)
    assert proc.returncode == 2 and 'slmjobs eval-data fetch hellaswag' in proc.stderr, proc.stderr
    assert [p.name for p in runs.iterdir()] == ['trained']


def test_a_training_run_then_its_eval_with_no_network(tmp_path, data_root, wait_until):
    train_then_eval('local', tmp_path, data_root, wait_until, offline=True)


def test_a_training_run_then_its_eval_on_grid_engine(tmp_path, data_root, wait_until, sge_cluster):
    """The same on the real Grid Engine: the training job's end hook submits the eval job with
    qsub from inside the job (the execution host's network is the cluster's own here)."""
    train_then_eval('sge', tmp_path, data_root, wait_until, offline=False)


def train_then_eval(cluster: str, tmp_path: Path, data_root: Path, wait_until, offline: bool) -> None:
    runs = Path(os.environ['SLMJOBS_RUNS_ROOT'])
    proc = slmjobs('launch', 'tiny', '--cluster', cluster, '--gpus', '1', '--name', 'hs', *TINY, 'eval.every=8',
                   'eval.after=[hellaswag]', root=data_root, cwd=tmp_path, offline=offline)
    assert proc.returncode == 0, proc.stderr
    assert 'then: eval run hs-eval (hellaswag) waits for it' in proc.stdout

    def finished(name):
        proc = slmjobs('status', name, '--json', root=data_root, cwd=tmp_path)
        if proc.returncode != 0:  # the scheduler did not answer this time (exit 1): ask again
            return False
        rows = json.loads(proc.stdout)
        return rows[0]['state'] in ('finished', 'stopped', 'broken') and rows[0]
    train_row = wait_until(lambda: finished('hs'), 600, 'the training run to finish', interval=2)
    eval_row = wait_until(lambda: finished('hs-eval'), 600, 'the eval run to finish', interval=2)
    log = (runs / 'hs-eval' / 'logs' / 'link-001.log').read_text()
    assert eval_row['state'] == 'finished', log[-3000:]
    assert train_row['state'] == 'finished'

    scores = [json.loads(line) for line in (runs / 'hs' / 'metrics.jsonl').read_text().splitlines()]
    during = [r for r in scores if r.get('event') == 'hellaswag']
    assert [r['step'] for r in during] == [8, 16]
    [after] = [json.loads(line) for line in (runs / 'hs' / 'evals.jsonl').read_text().splitlines()]
    assert (after['task'], after['scorer'], after['step'], after['n']) == ('hellaswag', 'native', 16, 9)
    assert after['acc_norm'] == during[-1]['acc_norm']  # the same checkpoint, the same items
    assert train_row['hellaswag'] == eval_row['hellaswag'] == {'acc_norm': after['acc_norm'], 'step': 16}
    table = slmjobs('status', root=data_root, cwd=tmp_path).stdout
    assert 'HELLASWAG' in table and f"{after['acc_norm']:.4f}@16" in table

    plot = slmjobs('plot', 'hs', '--metric', 'hellaswag', root=data_root, cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert Path(plot.stdout.strip()).read_bytes()[:4] == b'\x89PNG'
