"""The native HellaSwag scorer against lm-evaluation-harness 0.4.13 itself, offline.

The same synthetic items (WikiHow brackets, string labels as on the hub, contexts longer than
the model's positions) are scored by `python -m trainer.evaluate --log-samples` on a run's
checkpoint and by lm-eval's own CLI (`--log_samples`) on the checkpoint's Hugging Face export,
with lm-eval's hellaswag task reading the local file. Every per-ending log-likelihood must agree
to 1e-4 and every decision must be equal (an aggregate can hide an off-by-one), for the bytes
tokenizer and a BPE. No network: HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, a private HF_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from eval_items import small_bpe, synthetic_items, tiny_run, write_items
from support import PYTHON, REPO
from test_hellaswag import evaluate, ok, samples


def offline_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               HF_HOME=str(tmp / 'hf-home'), OMP_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
    return env


def export(run: Path, out: Path) -> Path:
    proc = subprocess.run([PYTHON, '-m', 'trainer.export', str(run), '--out', str(out)], cwd=run.parent,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def lm_eval_samples(model_dir: Path, data: Path, tmp: Path) -> list[dict]:
    """lm-eval's own CLI on the local file; its per-item samples in doc order."""
    from trainer.lmeval import LOCAL_HELLASWAG, write_hellaswag_task
    tasks = write_hellaswag_task(data, tmp / 'tasks')
    out = tmp / 'lm-eval-out'
    proc = subprocess.run([PYTHON, '-m', 'lm_eval', '--model', 'hf',
                           '--model_args', f'pretrained={model_dir},dtype=float32', '--tasks', LOCAL_HELLASWAG,
                           '--include_path', str(tasks), '--device', 'cpu', '--batch_size', '4',
                           '--log_samples', '--output_path', str(out)],
                          cwd=tmp, env=offline_env(tmp), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = list(out.rglob(f'samples_{LOCAL_HELLASWAG}_*.jsonl'))
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s['doc_id'])


@pytest.mark.parametrize('tokenizer', ['bytes', 'bpe'])
def test_every_loglikelihood_and_decision_equals_lm_evals(tmp_path, tokenizer):
    items = synthetic_items(16, seed=11, string_labels=True)
    tok = small_bpe(items, vocab_size=400) if tokenizer == 'bpe' else None
    run = tiny_run(tmp_path / 'run', tok, block_size=96 if tok is None else 40, seed=3)
    data = write_items(tmp_path / 'items.jsonl', items)

    ours_path = tmp_path / 'ours.jsonl'
    [record] = ok(evaluate(str(run), '--data', str(data), '--log-samples', str(ours_path), '--device', 'cpu',
                           cwd=tmp_path))
    assert record['truncated'] > 0  # left truncation is part of what is compared
    ours = samples(ours_path)
    exported = export(run, tmp_path / 'export')
    theirs = lm_eval_samples(exported, data, tmp_path)

    # the calibration path: the native scorer on a Hugging Face directory (OpenAI's GPT-2 on the
    # cluster) gives the checkpoint's figures; it records nothing, it prints its record
    hf_path = tmp_path / 'hf.jsonl'
    [hf_record] = ok(evaluate('--hf-dir', str(exported), '--data', str(data), '--log-samples', str(hf_path),
                              '--device', 'cpu', cwd=tmp_path, **{k: v for k, v in offline_env(tmp_path).items()
                                                                 if k.startswith(('HF_', 'TRANS'))}))
    assert (hf_record['acc'], hf_record['acc_norm'], hf_record['checkpoint']) == \
        (record['acc'], record['acc_norm'], str(exported))
    for mine, hf in zip(ours, samples(hf_path)):
        assert mine['loglikelihoods'] == pytest.approx(hf['loglikelihoods'], abs=1e-4)
        assert mine['ending_tokens'] == hf['ending_tokens']

    assert [s['doc_id'] for s in theirs] == [s['index'] for s in ours] == list(range(16))
    worst = 0.0
    for mine, lm_eval in zip(ours, theirs):
        their_lls = [float(resp[0]) for resp in lm_eval['filtered_resps']]
        assert mine['loglikelihoods'] == pytest.approx(their_lls, abs=1e-4), mine['index']
        worst = max(worst, *(abs(a - b) for a, b in zip(mine['loglikelihoods'], their_lls)))
        lls, chars = mine['loglikelihoods'], mine['ending_chars']
        acc = int(max(range(4), key=lambda k: lls[k]) == mine['label'])
        acc_norm = int(max(range(4), key=lambda k: lls[k] / chars[k]) == mine['label'])
        assert (acc, acc_norm) == (lm_eval['acc'], lm_eval['acc_norm']), mine['index']
    assert record['acc'] == pytest.approx(sum(s['acc'] for s in theirs) / 16)
    assert record['acc_norm'] == pytest.approx(sum(s['acc_norm'] for s in theirs) / 16)
    # the model has opinions: decisions are not all ties, the figures are not all equal
    assert len({round(ll, 3) for s in ours for ll in s['loglikelihoods']}) > 32
    print(f'{tokenizer}: largest difference from lm-eval {worst:.2e} nats over {16 * 4} endings')


def test_other_tasks_go_through_lm_eval_and_are_recorded_with_their_scorer(tmp_path):
    """A task that is not the native one (here lm-eval's hellaswag on the local file, under its
    own name) runs through lm-eval on a temporary export; its figures land in evals.jsonl with
    scorer lm-eval, beside the native record, and agree with it."""
    from trainer.lmeval import LOCAL_HELLASWAG, write_hellaswag_task
    items = synthetic_items(8, seed=12)
    run = tiny_run(tmp_path / 'run', block_size=96, seed=4)
    data = write_items(tmp_path / 'items.jsonl', items)
    tasks = write_hellaswag_task(data, tmp_path / 'tasks')
    scratch = tmp_path / 'tmp'
    scratch.mkdir()
    env = {k: v for k, v in offline_env(tmp_path).items() if k.startswith(('HF_', 'TRANS'))}
    records = ok(evaluate(str(run), '--tasks', f'hellaswag,{LOCAL_HELLASWAG}', '--include-path', str(tasks),
                          '--data', str(data), '--device', 'cpu', cwd=tmp_path, TMPDIR=str(scratch), **env))
    native, other = records
    assert (native['scorer'], other['scorer'], other['task']) == ('native', 'lm-eval', LOCAL_HELLASWAG)
    assert other['n'] == native['n'] == 8
    assert (other['acc'], other['acc_norm']) == (native['acc'], native['acc_norm'])
    assert other['checkpoint'] == native['checkpoint'] == 'ep0-ba8-rank0.pt'
    assert not list(scratch.iterdir())  # the temporary export is gone
    recorded = [json.loads(line) for line in (run / 'evals.jsonl').read_text().splitlines()]
    assert [(r['task'], r['scorer']) for r in recorded] == [('hellaswag', 'native'), (LOCAL_HELLASWAG, 'lm-eval')]
    again = evaluate(str(run), '--tasks', f'hellaswag,{LOCAL_HELLASWAG}', '--include-path', str(tasks),
                     '--data', str(data), '--device', 'cpu', cwd=tmp_path)
    assert ok(again) == [] and len((run / 'evals.jsonl').read_text().splitlines()) == 2
