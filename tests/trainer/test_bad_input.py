"""Bad input: one line naming the value and what is allowed, exit 2, nothing written or destroyed.
These run the real entry points; they fail before `import composer`, so each takes a second or two."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON, REPO, SMALL


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE='offline', **(env or {}))
    full_env.pop('SLMJOBS_DEADLINE', None)
    return subprocess.run([PYTHON, '-m', module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def finished_run(reference, tmp_path) -> Path:
    """A copy of a finished run: bad input against it must leave it untouched."""
    import shutil
    run_dir = tmp_path / 'run'
    shutil.copytree(reference, run_dir, symlinks=True)
    return run_dir


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('override, needles', [
    (['model=gpt3'], ['model=gpt3', 'gpt2-medium', 'tiny']),
    (['model.block_size=16'], ['32 tokens', 'model.block_size=16']),
    (['model.vocab_size=100'], ['model.vocab_size=100', '257']),
    (['train.global_batch_size=3', 'train.microbatch_size=2'], ['train.microbatch_size=2']),
    (['train.precision=fp8'], ['train.precision=fp8', 'amp_bf16']),
])
def test_bad_training_config_exits_2_and_leaves_the_run_alone(override, needles, dataset, finished_run, tmp_path):
    before = snapshot(finished_run)
    proc = run_module('trainer.train', *SMALL, f'data.path={dataset}', *override,
                      'run_name=run', f'run_dir={finished_run}', cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert snapshot(finished_run) == before


def test_data_path_without_shards_exits_2_and_writes_nothing(tmp_path):
    empty = tmp_path / 'nodata'
    empty.mkdir()
    run_dir = tmp_path / 'new-run'
    proc = run_module('trainer.train', 'model=tiny', f'data.path={empty}', f'run_dir={run_dir}', cwd=tmp_path)
    assert_one_line_error(proc, f'data.path={empty}', 'python -m trainer.prepare')
    assert not run_dir.exists()
    assert sorted(os.listdir(tmp_path)) == ['nodata']  # no outputs/, .hydra/, run dir


def test_data_path_is_relative_to_slmjobs_data_root(tmp_path):
    proc = run_module('trainer.train', 'data.path=somewhere', cwd=tmp_path,
                      env={'SLMJOBS_DATA_ROOT': str(tmp_path / 'root')})
    assert_one_line_error(proc, str(tmp_path / 'root' / 'somewhere'))


def test_unknown_config_key_exits_2_naming_the_closest_key(tmp_path):
    proc = run_module('trainer.train', 'train.max_stepz=1', cwd=tmp_path)
    assert_one_line_error(proc, 'train.max_stepz: unknown key; did you mean train.max_steps?')
    added = run_module('trainer.train', '+checkpoint.kepe=1', cwd=tmp_path)  # hydra would add it
    assert_one_line_error(added, 'checkpoint.kepe: unknown key; did you mean checkpoint.keep?')
    assert sorted(os.listdir(tmp_path)) == []


def test_empty_corpus_exits_2_and_creates_no_dataset(tmp_path):
    (tmp_path / 'empty.txt').write_text('')
    out = tmp_path / 'ds'
    proc = run_module('trainer.prepare', '--source', str(tmp_path / 'empty.txt'), '--tokenizer', 'bytes',
                      '--out', str(out), cwd=tmp_path)
    assert_one_line_error(proc, 'empty')
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.ds')] == []  # no temp dir left


def test_prepare_refuses_to_overwrite_a_finished_dataset(tmp_path):
    src = tmp_path / 'docs'
    src.mkdir()
    for i in range(3):
        (src / f'{i}.txt').write_text(f'document {i} ' * 50)
    out = tmp_path / 'ds'
    first = run_module('trainer.prepare', '--source', str(src), '--tokenizer', 'bytes', '--seq-len', '16',
                       '--val-fraction', '0.5', '--out', str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = snapshot(out)
    again = run_module('trainer.prepare', '--source', str(src), '--tokenizer', 'bytes', '--out', str(out), cwd=tmp_path)
    assert_one_line_error(again, '--force')
    assert snapshot(out) == before
    forced = run_module('trainer.prepare', '--source', str(src), '--tokenizer', 'bytes', '--seq-len', '8',
                        '--val-fraction', '0.5', '--out', str(out), '--force', cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert '"seq_len": 8' in (out / 'dataset.json').read_text()


def test_killed_preparation_never_looks_finished(tmp_path):
    out = tmp_path / 'ds'
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ['--source', 'builtin', '--tokenizer', 'bytes', '--out', str(out), '--piece-chars', '200000']
    proc = subprocess.Popen([PYTHON, '-m', 'trainer.prepare', *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob('.ds.partial/train')):
        time.sleep(0.01)
    assert list(tmp_path.glob('.ds.partial')), 'the preparation never started writing'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / 'dataset.json').exists()
    # The trainer refuses it; the same command again (no --force needed) resumes and finishes it.
    refused = run_module('trainer.train', f'data.path={out}', cwd=tmp_path)
    assert refused.returncode == 2
    again = run_module('trainer.prepare', *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (out / 'dataset.json').exists()
    assert not list(tmp_path.glob('.ds.*')), 'the killed preparation left its work directory behind'
