"""`slmjobs eval-data fetch hellaswag --file PATH` (no network in tests: --file with synthetic items),
the layout the worker then finds with no --data, and refusals that leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'trainer'))
from eval_items import synthetic_items, tiny_run, write_items  # noqa: E402


def slmjobs(*args: str, root: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), SLMJOBS_DATA_ROOT=str(root))
    return subprocess.run([sys.executable, '-m', 'slmjobs', *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_git_blob_id_is_gits():
    from slmjobs.evaldata import git_blob_id
    assert git_blob_id(b'hello\n') == 'ce013625030ba8dba906f756967f9e9ca394464a'  # git hash-object


def test_fetch_a_file_then_evaluate_without_data(tmp_path):
    root = tmp_path / 'data-root'
    items = write_items(tmp_path / 'mine.jsonl', synthetic_items(6, seed=31))
    proc = slmjobs('eval-data', 'fetch', 'hellaswag', '--file', str(items), root=root, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = root / 'evals' / 'hellaswag'
    assert sorted(p.name for p in root.joinpath('evals').iterdir()) == ['hellaswag']  # no partial left
    assert (folder / 'hellaswag_val.jsonl').read_bytes() == items.read_bytes()
    manifest = json.loads((folder / 'manifest.json').read_text())
    assert (manifest['items'], manifest['original'], manifest['source']) == (6, False, str(items))
    assert 'not the original HellaSwag validation set' in proc.stderr and '6 items' in proc.stdout

    run = tiny_run(tmp_path / 'run', block_size=96)
    env = dict(os.environ, PYTHONPATH=str(REPO), SLMJOBS_DATA_ROOT=str(root))
    scored = subprocess.run([sys.executable, '-m', 'trainer.evaluate', str(run), '--device', 'cpu'], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)['data'] == str(folder / 'hellaswag_val.jsonl')

    again = write_items(tmp_path / 'other.jsonl', synthetic_items(4, seed=32))
    assert slmjobs('eval-data', 'fetch', 'hellaswag', '--file', str(again), root=root, cwd=tmp_path).returncode == 0
    assert json.loads((folder / 'manifest.json').read_text())['items'] == 4
    assert sorted(p.name for p in root.joinpath('evals').iterdir()) == ['hellaswag']


def test_a_malformed_file_is_one_line_and_writes_nothing(tmp_path):
    root = tmp_path / 'data-root'
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps(synthetic_items(1)[0]) + '\n{"ctx_a": "no endings"}\n')
    proc = slmjobs('eval-data', 'fetch', 'hellaswag', '--file', str(bad), root=root, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and 'line 2' in proc.stderr, proc.stderr
    assert not root.exists()


def test_an_unknown_task_is_one_line(tmp_path):
    proc = slmjobs('eval-data', 'fetch', 'winogrande', root=tmp_path / 'r', cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and 'allowed: hellaswag' in proc.stderr
    assert not (tmp_path / 'r').exists()


def test_a_launch_that_needs_a_missing_eval_set_is_refused(tmp_path):
    """eval.every (or eval.after=[hellaswag]) without the items: one line at launch, before any
    job waits in a queue; nothing submitted, no run directory."""
    from trainer.prepare import prepare_builtin
    root = tmp_path / 'data-root'
    prepare_builtin(root / 'small', seq_len=32, max_documents=20)
    for override in ('eval.every=5', 'eval.after=[hellaswag]'):
        proc = slmjobs('launch', 'tiny', 'data.path=small', override, '--name', 'needs-eval', root=root, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
        assert 'slmjobs eval-data fetch hellaswag' in proc.stderr and 'eval.data=FILE' in proc.stderr
        assert not (tmp_path / 'runs' / 'needs-eval').exists()
