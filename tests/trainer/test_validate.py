"""The configuration checks without torch: trainer.validate on composed configurations and on
real dataset directories (some of them broken on purpose), and what importing it costs."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from support import PYTHON, REPO
from trainer.dataset_format import DATASET_FILE, FORMAT_VERSION
from trainer.errors import BadInput
from trainer.validate import compose, validate

HEAVY = ('torch', 'numpy', 'composer', 'streaming', 'omegaconf', 'hydra', 'transformers')


def write_dataset(path, seq_len=32, vocab_size=257, windows=100, val=True, **changes):
    """What trainer.prepare leaves: dataset.json (written last) and each split's index.json."""
    info = {'format': FORMAT_VERSION, 'tokenizer': {'kind': 'bytes', 'vocab_size': vocab_size, 'eos_id': 256},
            'seq_len': seq_len, 'window': seq_len + 1, 'bytes_per_token': 1.0,
            'splits': {'train': {'windows': windows}, 'val': {'windows': 4}}, **changes}
    for split in ('train', 'val') if val else ('train',):
        (path / split).mkdir(parents=True)
        (path / split / 'index.json').write_text('{"shards": []}')
    (path / DATASET_FILE).write_text(json.dumps(info))
    return path


def config(data_path, *overrides):
    return compose(['model=tiny', f'data.path={data_path}', 'model.block_size=32', *overrides])


def refused(data_path, *overrides, **kw) -> str:
    with pytest.raises(BadInput) as e:
        validate(config(data_path, *overrides), **kw)
    message = str(e.value)
    assert '\n' not in message
    return message


def test_importing_the_checks_loads_no_torch_numpy_or_hydra():
    proc = subprocess.run([PYTHON, '-X', 'importtime', '-c', 'import trainer.validate'], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # -X importtime: "import time: self [us] | cumulative | imported package", one line per module
    modules = {m.group(1).strip() for m in re.finditer(r'^import time:\s+\d+ \|\s+\d+ \|(.+)$', proc.stderr, re.M)}
    assert {'trainer.validate', 'trainer.dataset_format'} <= modules  # the measurement saw the imports
    packages = {name.split('.')[0] for name in modules}
    assert not packages & set(HEAVY), f'imported: {sorted(packages & set(HEAVY))}'


def test_a_good_configuration_gives_the_plan(tmp_path):
    data = write_dataset(tmp_path / 'ds')
    plan = validate(config(data, 'train.global_batch_size=8', 'train.microbatch_size=2'),
                    world_size=2, device='cpu')
    assert (plan.data_dir, plan.vocab_size, plan.per_device_batch, plan.microbatch) == (data, 257, 4, 2)
    assert (plan.device, plan.precision, plan.eval_batches) == ('cpu', 'fp32', 4)
    assert plan.run_dir.is_absolute() and plan.checkpoint_dir == plan.run_dir / 'checkpoints'


def test_the_prepared_dataset_passes(dataset):
    plan = validate(config(dataset))
    assert plan.dataset['seq_len'] == 32 and plan.device is None and plan.precision is None


def test_unknown_keys_name_the_closest_allowed_one(tmp_path):
    data = write_dataset(tmp_path / 'ds')
    with pytest.raises(BadInput, match=r'train\.max_stepz: unknown key; did you mean train\.max_steps\?'):
        compose(['train.max_stepz=10'])
    with pytest.raises(BadInput, match='did you mean train.max_steps'):
        compose(['+train.max_stepz=10'])  # hydra would add it
    plain = config(data)
    plain['checkpoint']['every'] = 5  # a dict built by hand, no hydra involved
    with pytest.raises(BadInput, match='checkpoint.every: unknown key;.* allowed in checkpoint: keep, '):
        validate(plain)


@pytest.mark.parametrize('override, needle', [
    ('train.lr=fast', 'train.lr=fast: must be a number'),
    ('train.max_steps=0', 'train.max_steps=0: must be a positive integer'),
    ('model.n_head=3', 'model.n_embd=128: must be divisible by model.n_head=3'),
    ('train.betas=[0.9]', 'train.betas=[0.9]: must be two numbers'),
    ('data.shuffle=maybe', 'data.shuffle=maybe: allowed: true, false'),
    ('wandb.mode=cloud', 'wandb.mode=cloud: allowed: auto, online, offline'),
    ('run_name=a/b', "run_name='a/b'"),
])
def test_values_training_would_trip_over(tmp_path, override, needle):
    assert needle in refused(write_dataset(tmp_path / 'ds'), override)


def test_missing_unfinished_and_broken_datasets(tmp_path):
    assert 'no prepared dataset' in refused(tmp_path / 'nowhere')
    unfinished = tmp_path / 'unfinished'  # a killed preparation: shards, no dataset.json
    (unfinished / 'train').mkdir(parents=True)
    (unfinished / 'train' / 'index.json').write_text('{}')
    assert f'no prepared dataset (shards) at {unfinished}' in refused(unfinished)

    truncated = write_dataset(tmp_path / 'truncated')
    text = (truncated / DATASET_FILE).read_text()
    (truncated / DATASET_FILE).write_text(text[:len(text) // 2])
    assert 'not a readable dataset description' in refused(truncated)
    newer = write_dataset(tmp_path / 'newer', format=FORMAT_VERSION + 1)
    assert f'format {FORMAT_VERSION + 1}; allowed: {FORMAT_VERSION}' in refused(newer)
    fieldless = write_dataset(tmp_path / 'fieldless', tokenizer={'kind': 'bytes'})
    assert "missing or malformed field 'vocab_size'" in refused(fieldless)


def test_windows_vocabulary_and_batch_against_the_model_and_ranks(tmp_path):
    data = write_dataset(tmp_path / 'ds', seq_len=64, vocab_size=4096, windows=6)
    assert 'windows of 64 tokens are longer than model.block_size=32' in refused(data)
    assert 'model.vocab_size=300: smaller than' in refused(data, 'model.block_size=64', 'model.vocab_size=300')
    assert 'global_batch_size=8: not divisible by the 3 ranks' in refused(data, 'model.block_size=64', world_size=3)
    assert 'train.microbatch_size=3: must divide the per-rank batch 4' in refused(
        data, 'model.block_size=64', 'train.microbatch_size=3', world_size=2)
    assert '6 training windows, fewer than train.global_batch_size=8' in refused(data, 'model.block_size=64')
    assert validate(config(data, 'model.block_size=64', 'train.global_batch_size=6')).vocab_size == 4096


def test_precision_against_the_device_where_it_is_known(tmp_path):
    data = write_dataset(tmp_path / 'ds')

    def plan(*overrides, **kw):
        p = validate(config(data, *overrides), **kw)
        return p.device, p.precision

    assert 'on CPU only fp32' in refused(data, 'train.precision=amp_bf16', device='cpu')
    assert 'on CPU only fp32' in refused(data, 'train.device=cpu', 'train.precision=amp_fp16')
    assert 'no CUDA device visible' in refused(data, 'train.device=gpu', device='cpu')
    assert 'compute capability 7' in refused(data, 'train.precision=amp_bf16', device='gpu', gpu_capability=7.0)
    assert plan(device='gpu', gpu_capability=8.0) == ('gpu', 'amp_bf16')
    assert plan(device='gpu', gpu_capability=7.5) == ('gpu', 'amp_fp16')
    assert plan() == (None, None)  # a login node: the job's device is not known yet
    assert plan('train.device=gpu', 'train.precision=amp_bf16') == ('gpu', 'amp_bf16')


def test_the_command_line_exits_2_with_one_line_or_prints_the_plan(tmp_path):
    data = write_dataset(tmp_path / 'ds')
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(*args):
        return subprocess.run([PYTHON, '-m', 'trainer.validate', *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    bad = run('--ranks', '3', f'data.path={data}', 'model.block_size=32')
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        'error: train.global_batch_size=8: not divisible by the 3 ranks; allowed: a multiple of 3']
    good = run('--ranks', '2', '--device', 'cpu', f'data.path={data}', 'model.block_size=32')
    assert good.returncode == 0, good.stderr
    plan = json.loads(good.stdout)
    assert (plan['world_size'], plan['per_device_batch'], plan['precision']) == (2, 4, 'fp32')
    assert plan['config']['model']['name'] == 'tiny'
    assert sorted(os.listdir(tmp_path)) == ['ds']  # nothing written


def test_a_whole_split_evaluation_is_never_guessed_at_zero_seconds(tmp_path):
    """eval_batches null (the whole val split): until the first evaluation is timed, the
    hand-off guesses it from the split's windows over the ranks' batches, not from 0 batches."""
    from trainer.train import eval_batches_per_rank
    data = write_dataset(tmp_path / 'ds', splits={'train': {'windows': 100}, 'val': {'windows': 50}})
    whole = validate(config(data, 'train.global_batch_size=8', 'train.eval_batches=null'), world_size=2)
    assert whole.eval_batches is None and eval_batches_per_rank(whole) == 7  # ceil(50 / (4 x 2))
    assert eval_batches_per_rank(validate(config(data, 'train.eval_batches=3'))) == 3
