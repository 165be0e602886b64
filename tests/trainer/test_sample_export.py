"""`slmjobs sample` and `slmjobs export` on real runs of the worker (CPU, a very small model).

The export is loaded by transformers alone in a fresh process (hf_load.py) and its logits are
compared with trainer.gpt.GPT holding the checkpoint's weights. Faults are real: a truncated
checkpoint file, a run whose checkpoints are gone, a model GPT2Config cannot express.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import PYTHON, REPO, SMALL, Worker
from offline_tokenizers import gpt2_sized_tokenizer

HERE = Path(__file__).resolve().parent
TEXT = 'The quick brown fox -- déjà vu, naïve café, 日本語, ✓ -- jumps over the lazy dog.\n\tEnd.'


def cli(*args: str, cwd: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE='offline', **env_extra)
    return subprocess.run([PYTHON, '-m', 'slmjobs', *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def launched(run_dir: Path) -> Path:
    """The CLI finds runs by their run.yaml (the launcher writes it; these runs were started by
    the worker directly)."""
    (run_dir / 'run.yaml').write_text(f'name: {run_dir.name}\nmodel: tiny\n')
    return run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, symlinks=True)
    return launched(dest)


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'error: ' in lines[0], proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


def checkpoint_logits(run_dir: Path, ids: list[list[int]], checkpoint: Path | None = None):
    import torch

    from trainer import checkpoints
    from trainer.run_inputs import model_config
    from trainer.sample import load_gpt
    path = checkpoint or checkpoints.newest_intact(run_dir / 'checkpoints')[0]
    model = load_gpt(model_config(run_dir), checkpoints.model_state(checkpoints.load(path)))
    with torch.no_grad():
        return model(torch.tensor(ids))


def load_with_transformers(export_dir: Path, ids: list[list[int]], tmp: Path) -> dict:
    import torch
    request, result = tmp / 'request.json', tmp / 'result.pt'
    request.write_text(json.dumps({'ids': ids, 'text': TEXT}))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    proc = subprocess.run([PYTHON, str(HERE / 'hf_load.py'), str(export_dir), str(request), str(result)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(result)


def assert_export_matches(run_dir: Path, export_dir: Path, vocab_size: int, tmp: Path) -> dict:
    import torch
    ids = [[(7 * i + 3) % vocab_size for i in range(16)], [(11 * i + 5) % vocab_size for i in range(16)]]
    got = load_with_transformers(export_dir, ids, tmp)
    want = checkpoint_logits(run_dir, ids)
    assert got['vocab_size'] == vocab_size
    assert got['logits'].shape == (2, 16, vocab_size)
    diff = (got['logits'] - want[..., :vocab_size]).abs().max().item()
    assert diff <= 1e-5, f'logits differ by {diff}'
    assert got['decoded'] == TEXT, 'the exported tokenizer does not round-trip'
    assert got['generated'].startswith(TEXT[:20]) and len(got['generated']) > 20
    assert torch.isfinite(got['logits']).all()
    return got


@pytest.fixture(scope='module')
def bpe_run(tmp_path_factory) -> Path:
    from trainer.prepare import prepare_builtin
    data = prepare_builtin(tmp_path_factory.mktemp('data') / 'bpe', tokenizer='bpe-builtin', seq_len=32,
                           max_documents=60)
    w = Worker(data, tmp_path_factory.mktemp('bpe-runs'))
    return w.run('bpe', max_steps=8).run_dir


# ---------------------------------------------------------------------------------- export

def test_the_worker_keeps_the_tokenizer_and_the_model_shape_in_the_run(reference, dataset):
    assert json.loads((reference / 'tokenizer' / 'dataset.json').read_text()) == \
        json.loads((dataset / 'dataset.json').read_text())
    model = json.loads((reference / 'model.json').read_text())
    assert (model['n_layer'], model['n_head'], model['n_embd'], model['vocab_size']) == (1, 2, 32, 257)


def test_export_of_a_bytes_run_loads_in_transformers_with_equal_logits(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'bytes-run')
    out = tmp_path / 'hf-bytes'
    proc = cli('export', str(run_dir), '--out', str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {'config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.json',
            'tokenizer_config.json'} <= set(os.listdir(out))
    got = assert_export_matches(run_dir, out, 257, tmp_path)
    assert got['ids'] == list(TEXT.encode('utf-8')), 'bytes export: ids must be the UTF-8 bytes'
    assert got['eos_token_id'] == 256


def test_export_of_a_bpe_run_drops_the_padded_rows(bpe_run, tmp_path):
    out = tmp_path / 'hf-bpe'
    proc = cli('export', str(launched(bpe_run)), '--out', str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / 'config.json').read_text())
    assert config['vocab_size'] == 4096 and config['model_type'] == 'gpt2'
    assert_export_matches(bpe_run, out, 4096, tmp_path)


def test_export_of_an_untrained_gpt2_124m(tmp_path):
    """The real gpt2 preset's shapes (124M, 50257 ids padded to 50304) in a checkpoint written in
    Composer's layout, as a run directory the worker would have left."""
    import torch

    from trainer.gpt import GPT, GPTConfig
    run_dir = tmp_path / 'gpt2-run'
    (run_dir / 'checkpoints').mkdir(parents=True)
    (run_dir / 'tokenizer').mkdir()
    torch.manual_seed(0)
    model = GPT(GPTConfig())  # the gpt2 preset: 12 layers, 12 heads, 768 wide, 1024 positions
    assert model.transformer.wte.weight.shape == (50304, 768)
    torch.save({'state': {'model': {f'model.{k}': v for k, v in model.state_dict().items()},
                          'timestamp': {'Timestamp': {'batch': 0}}}, 'rng': []},
               run_dir / 'checkpoints' / 'ep0-ba0-rank0.pt')
    del model
    os.symlink('ep0-ba0-rank0.pt', run_dir / 'checkpoints' / 'latest-rank0.pt')
    gpt2_sized_tokenizer().save(str(run_dir / 'tokenizer' / 'tokenizer.json'))
    (run_dir / 'tokenizer' / 'dataset.json').write_text(json.dumps(
        {'tokenizer': {'kind': 'gpt2', 'vocab_size': 50257, 'eos_id': 50256}}))
    (run_dir / 'model.json').write_text(json.dumps(
        {'preset': 'gpt2', 'vocab_size': 50257, 'block_size': 1024, 'n_layer': 12, 'n_head': 12,
         'n_embd': 768, 'dropout': 0.0, 'bias': True}))

    out = tmp_path / 'hf-gpt2'
    proc = cli('export', str(launched(run_dir)), '--out', str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / 'config.json').read_text())
    assert (config['vocab_size'], config['n_positions'], config['n_layer'], config['n_head']) == (50257, 1024, 12, 12)
    assert_export_matches(run_dir, out, 50257, tmp_path)


def test_a_run_from_before_model_json_is_read_through_its_run_yaml(reference, dataset, tmp_path):
    """No model.json or tokenizer/: the shape comes from the preset plus the run's overrides, the
    tokenizer from its data.path (relative to data_root, as the worker resolves it)."""
    import yaml
    run_dir = copy_run(reference, tmp_path / 'old-run')
    (run_dir / 'model.json').unlink()
    shutil.rmtree(run_dir / 'tokenizer')
    overrides = [o for o in SMALL if o != 'model=tiny'] + [f'data.path={dataset.name}']
    (run_dir / 'run.yaml').write_text(yaml.safe_dump(
        {'name': 'old-run', 'model': 'tiny', 'overrides': overrides, 'data_root': str(dataset.parent)}))
    out = tmp_path / 'hf'
    proc = cli('export', str(run_dir), '--out', str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_export_matches(run_dir, out, 257, tmp_path)
    (run_dir / 'run.yaml').write_text(yaml.safe_dump({'name': 'old-run', 'model': 'tiny', 'overrides': overrides,
                                                      'data_root': str(tmp_path / 'moved')}))
    assert_one_line_error(cli('sample', str(run_dir), cwd=tmp_path), 'no tokenizer/dataset.json', 'moved')


# ---------------------------------------------------------------------------------- sample

def test_sample_is_reproducible_by_seed(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'runs' / 'ref')

    def sample(seed, run=str(run_dir)):
        proc = cli('sample', run, '--prompt', 'The ', '--max-new-tokens', '40', '--seed', str(seed),
                   cwd=tmp_path, SLMJOBS_RUNS_ROOT=str(run_dir.parent))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    first, again, other = sample(1), sample(1, run='ref'), sample(2)  # by path, by name
    assert first == again
    assert first != other
    assert len(first.encode()) > 5


def test_sample_skips_a_truncated_latest_checkpoint(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'run')
    latest = (run_dir / 'checkpoints' / 'latest-rank0.pt').resolve()
    assert latest.name == 'ep0-ba24-rank0.pt'
    os.truncate(latest, latest.stat().st_size // 2)
    proc = cli('sample', str(run_dir), '--max-new-tokens', '5', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'warning: skipped ep0-ba24-rank0.pt: damaged' in proc.stderr
    assert 'sampling ep0-ba20-rank0.pt (step 20)' in proc.stderr
    # export falls back the same way: its logits are step 20's
    out = tmp_path / 'hf'
    proc = cli('export', str(run_dir), '--out', str(out), cwd=tmp_path)
    assert proc.returncode == 0 and 'exported ep0-ba20-rank0.pt (step 20)' in proc.stdout, proc.stderr
    assert_export_matches(run_dir, out, 257, tmp_path)
    # a checkpoint named by the user, under any name: its step is read from inside it
    mine = tmp_path / 'mine.pt'
    shutil.copyfile(run_dir / 'checkpoints' / 'ep0-ba12-rank0.pt', mine)
    proc = cli('sample', str(run_dir), '--checkpoint', str(mine), '--max-new-tokens', '5', cwd=tmp_path)
    assert proc.returncode == 0 and 'sampling mine.pt (step 12)' in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------- bad input

def test_no_checkpoint_is_one_line(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'run')
    shutil.rmtree(run_dir / 'checkpoints')
    (run_dir / 'checkpoints').mkdir()
    assert_one_line_error(cli('sample', str(run_dir), cwd=tmp_path), 'no checkpoint')
    out = tmp_path / 'hf'
    assert_one_line_error(cli('export', str(run_dir), '--out', str(out), cwd=tmp_path), 'no checkpoint')
    assert not out.exists()


def test_every_checkpoint_damaged_is_one_line(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'run')
    for path in (run_dir / 'checkpoints').glob('ep*-rank0.pt'):
        os.truncate(path, 1000)
    proc = cli('export', str(run_dir), '--out', str(tmp_path / 'hf'), cwd=tmp_path)
    assert_one_line_error(proc, 'no intact checkpoint', 'ep0-ba24-rank0.pt: damaged')
    assert not (tmp_path / 'hf').exists()
    named = run_dir / 'checkpoints' / 'ep0-ba8-rank0.pt'
    assert_one_line_error(cli('sample', str(run_dir), '--checkpoint', str(named), cwd=tmp_path),
                          f'--checkpoint {named}: damaged')


def test_a_non_empty_out_is_not_overwritten_without_force(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'run')
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    before = tree(out)
    assert_one_line_error(cli('export', str(run_dir), '--out', str(out), cwd=tmp_path),
                          f'--out {out}: directory is not empty', '--force')
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine', 'run']  # no scratch left
    proc = cli('export', str(run_dir), '--out', str(out), '--force', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (out / 'notes.txt').exists() and (out / 'model.safetensors').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine', 'run']


def test_a_model_gpt2config_cannot_express_is_refused(worker, tmp_path):
    run_dir = launched(worker.run('nobias', 'model.bias=false', max_steps=4).run_dir)
    out = tmp_path / 'hf'
    assert_one_line_error(cli('export', str(run_dir), '--out', str(out), cwd=tmp_path), 'model.bias=false')
    assert not out.exists() and not list(tmp_path.glob('.hf*'))
    proc = cli('sample', str(run_dir), '--max-new-tokens', '3', cwd=tmp_path)  # sampling still works
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize('args, needle', [
    (['--temperature', '-1'], '--temperature -1.0'),
    (['--top-k', '0'], '--top-k 0'),
    (['--max-new-tokens', 'many'], "argument --max-new-tokens: invalid int value: 'many'"),
    (['--device', 'tpu'], '--device tpu: allowed: auto, cpu, cuda'),
])
def test_bad_sample_options_are_one_line(reference, tmp_path, args, needle):
    run_dir = copy_run(reference, tmp_path / 'run')
    assert_one_line_error(cli('sample', str(run_dir), *args, cwd=tmp_path), needle)


def test_a_checkpoint_with_non_finite_weights_is_refused(reference, tmp_path):
    """A diverged run's weights (here a real checkpoint with one tensor set to NaN and another
    to inf): export writes nothing and sample draws nothing, each with one line naming the file
    and the first such tensor; an earlier checkpoint named with --checkpoint still samples."""
    import torch
    run_dir = copy_run(reference, tmp_path / 'run')
    latest = (run_dir / 'checkpoints' / 'latest-rank0.pt').resolve()
    state = torch.load(latest, map_location='cpu', weights_only=False)
    weights = state['state']['model']
    weights['model.transformer.h.0.mlp.c_fc.weight'][3, 5] = float('nan')
    weights['model.transformer.ln_f.weight'][0] = float('inf')
    torch.save(state, latest)
    out = tmp_path / 'hf'
    proc = cli('export', str(run_dir), '--out', str(out), cwd=tmp_path)
    assert_one_line_error(proc, f'checkpoint {latest}: weight transformer.h.0.mlp.c_fc.weight holds nan',
                          'allowed: a checkpoint whose weights are all finite')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run']  # no export, no scratch
    assert_one_line_error(cli('sample', str(run_dir), '--max-new-tokens', '3', cwd=tmp_path),
                          f'checkpoint {latest}: weight transformer.h.0.mlp.c_fc.weight holds nan')
    weights['model.transformer.h.0.mlp.c_fc.weight'][3, 5] = 0.0
    torch.save(state, latest)
    assert_one_line_error(cli('sample', str(run_dir), cwd=tmp_path), 'transformer.ln_f.weight holds inf')
    earlier = run_dir / 'checkpoints' / 'ep0-ba20-rank0.pt'
    proc = cli('sample', str(run_dir), '--checkpoint', str(earlier), '--max-new-tokens', '3', cwd=tmp_path)
    assert proc.returncode == 0 and 'sampling ep0-ba20-rank0.pt (step 20)' in proc.stderr, proc.stderr
