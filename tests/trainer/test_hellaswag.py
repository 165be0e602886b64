"""The native HellaSwag scorer (trainer/hellaswag.py) and `python -m trainer.evaluate`, on
synthetic HellaSwag-format items and tiny run directories (tests/trainer/eval_items.py).

The equality with lm-evaluation-harness itself is in test_lmeval.py; here: lm-eval's
preprocessing, a model that favours the gold ending scores 1.0 (and 0 with the labels moved),
2 ranks give 1 rank's figures on an odd number of items, evals.jsonl never records twice, and
bad input is one line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from eval_items import small_bpe, synthetic_items, tiny_run, unigram_weights, write_items
from support import PYTHON, REPO


def evaluate(*args: str, cwd: Path, ranks: int = 1, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', **env_extra)
    env.pop('SLMJOBS_DATA_ROOT', None)
    if ranks > 1:
        cmd = [PYTHON, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={ranks}',
               '-m', 'trainer.evaluate']
    else:
        cmd = [PYTHON, '-m', 'trainer.evaluate']
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def ok(proc) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- lm-eval's preprocessing -----------------------------------------------------------------

def test_preprocessing_is_lm_evals():
    from trainer.hellaswag import item_from_doc, preprocess
    # one pass of each rule, in lm-eval's order: a leading space and a double space survive
    assert preprocess(' [header] How to paint [title] Buy paint.  [step] Go to  the shop. ') == \
        ' How to paint. Buy paint.  Go to the shop.'
    assert preprocess('[substeps] If it rains, stay.') == ' If it rains, stay.'  # lm-eval's quirk, kept
    item = item_from_doc(7, {'activity_label': 'Roof shingle removal', 'ctx_a': 'A man is sitting on a roof.',
                             'ctx_b': 'HE starts', 'endings': ['a', 'b', 'c', 'd'], 'label': '3'})
    assert item.query == 'Roof shingle removal: A man is sitting on a roof. He starts'
    assert (item.index, item.label) == (7, 3)


def test_trailing_context_spaces_move_to_the_continuation():
    from trainer.hellaswag import encode_pair
    ids = lambda s: list(s.encode())  # noqa: E731  bytes: one id per character
    context, cont = encode_pair(ids, 'How to paint. ', ' Buy paint.')
    assert bytes(context) == b'How to paint.' and bytes(cont) == b'  Buy paint.'


def test_a_subset_is_spread_and_fixed():
    from trainer.hellaswag import subset, subset_name
    assert [i for i in subset(list(range(10)), 4)] == [0, 2, 5, 7]
    assert subset(list(range(3)), 5) == [0, 1, 2]
    assert subset_name(4, 10) == '4 of 10, evenly spaced' and subset_name(None, 10) == 'all 10'


# ---- decisions ---------------------------------------------------------------------------------

def gold_favoured_items(n: int, seed: int = 1) -> list[dict]:
    """The gold ending is made of 'a's, the others of 'z's of the same length."""
    items = synthetic_items(n, seed=seed)
    for item in items:
        length = len(item['endings'][0]) or 1
        item['endings'] = ['z' * length] * 4
        item['endings'][item['label']] = 'a' * length
    return items


@pytest.mark.parametrize('tokenizer', ['bytes', 'bpe'])
def test_a_model_that_favours_the_gold_ending_scores_1_and_0_with_labels_moved(tmp_path, tokenizer):
    items = gold_favoured_items(9)
    # trained on text without runs of 'a' or 'z': no merges of them, so 'a' is one token each time
    tok = small_bpe(synthetic_items(9, seed=1), vocab_size=300) if tokenizer == 'bpe' else None
    favoured = ord('a') if tok is None else tok.token_to_id('a')
    run = tiny_run(tmp_path / 'run', tok, weights=unigram_weights(favoured))
    data = write_items(tmp_path / 'items.jsonl', items)
    [record] = ok(evaluate(str(run), '--data', str(data), '--device', 'cpu', cwd=tmp_path))
    assert (record['n'], record['acc'], record['acc_norm'], record['acc_norm_tokens']) == (9, 1.0, 1.0, 1.0)
    assert record['acc_stderr'] == 0.0

    for item in items:
        item['label'] = (item['label'] + 1) % 4
    moved = write_items(tmp_path / 'moved.jsonl', items)
    [record] = ok(evaluate(str(run), '--data', str(moved), '--device', 'cpu', cwd=tmp_path))
    assert (record['acc'], record['acc_norm'], record['acc_norm_tokens']) == (0.0, 0.0, 0.0)


def test_log_samples_hold_one_line_per_item_in_file_order(tmp_path):
    items = synthetic_items(11, seed=3, string_labels=True)
    run = tiny_run(tmp_path / 'run', block_size=96)
    data = write_items(tmp_path / 'items.jsonl', items)
    out = tmp_path / 'samples.jsonl'
    [record] = ok(evaluate(str(run), '--data', str(data), '--log-samples', str(out), '--batch-items', '3',
                           '--device', 'cpu', cwd=tmp_path))
    lines = samples(out)
    assert [s['index'] for s in lines] == list(range(11))
    assert [s['label'] for s in lines] == [int(i['label']) for i in items]
    for s in lines:
        assert set(s) == {'index', 'label', 'loglikelihoods', 'ending_chars', 'ending_tokens'}
        assert len(s['loglikelihoods']) == 4 and all(ll < 0 for ll in s['loglikelihoods'])
    # bytes: an ending's tokens are its characters plus the leading space (ASCII text)
    from trainer.hellaswag import item_from_doc
    for s, doc in zip(lines, items):
        choices = item_from_doc(0, doc).choices
        assert s['ending_chars'] == [len(c) for c in choices]
        assert s['ending_tokens'] == [len(c) + 1 for c in choices]
    acc = sum(max(range(4), key=lambda k: s['loglikelihoods'][k]) == s['label'] for s in lines) / 11
    assert record['acc'] == pytest.approx(acc)
    assert record['truncated'] > 0  # contexts of up to 40 words do not fit 96 bytes
    assert record['items'] == 'all 11' and record['checkpoint'] == 'ep0-ba8-rank0.pt' and record['step'] == 8


def test_batching_does_not_change_a_score(tmp_path):
    items = synthetic_items(10, seed=4)
    run = tiny_run(tmp_path / 'run', block_size=96)
    data = write_items(tmp_path / 'items.jsonl', items)
    lls = {}
    for batch in ('1', '7'):
        out = tmp_path / f'samples-{batch}.jsonl'
        ok(evaluate(str(run), '--data', str(data), '--log-samples', str(out), '--batch-items', batch,
                    '--device', 'cpu', cwd=tmp_path / 'run'))
        lls[batch] = [s['loglikelihoods'] for s in samples(out)]
    for one, seven in zip(lls['1'], lls['7']):
        assert one == pytest.approx(seven, abs=1e-4)


def test_two_ranks_give_the_figures_of_one_on_an_odd_number_of_items(tmp_path):
    items = synthetic_items(7, seed=5)
    run = tiny_run(tmp_path / 'run', block_size=96)
    data = write_items(tmp_path / 'items.jsonl', items)
    one_out, two_out = tmp_path / 'one.jsonl', tmp_path / 'two.jsonl'
    [one] = ok(evaluate(str(run), '--data', str(data), '--log-samples', str(one_out), '--device', 'cpu',
                        '--checkpoint', str(run / 'checkpoints' / 'ep0-ba8-rank0.pt'), cwd=tmp_path))
    (run / 'evals.jsonl').unlink()
    two = ok(evaluate(str(run), '--data', str(data), '--log-samples', str(two_out), '--device', 'cpu',
                      cwd=tmp_path, ranks=2))
    assert len(two) == 1, two  # rank 0 alone prints and records
    for key in ('n', 'acc', 'acc_norm', 'acc_norm_tokens', 'truncated'):
        assert two[0][key] == one[key], key
    assert two[0]['n'] == 7
    assert [s['index'] for s in samples(two_out)] == list(range(7))  # none twice, none missing
    for a, b in zip(samples(one_out), samples(two_out)):
        assert a['loglikelihoods'] == pytest.approx(b['loglikelihoods'], abs=1e-5)
    assert len((run / 'evals.jsonl').read_text().splitlines()) == 1


# ---- evals.jsonl ----------------------------------------------------------------------------

def test_a_repeated_eval_records_nothing_twice(tmp_path):
    run = tiny_run(tmp_path / 'run')
    data = write_items(tmp_path / 'items.jsonl', synthetic_items(5))
    ok(evaluate(str(run), '--data', str(data), '--device', 'cpu', cwd=tmp_path))
    again = evaluate(str(run), '--data', str(data), '--device', 'cpu', cwd=tmp_path)
    assert ok(again) == [] and 'already in' in again.stderr
    ok(evaluate(str(run), '--data', str(data), '--items', '3', '--device', 'cpu', cwd=tmp_path))  # another subset
    tiny_run(run, step=16, seed=1)  # a newer checkpoint: --all-kept scores only that one
    [new] = ok(evaluate(str(run), '--data', str(data), '--all-kept', '--device', 'cpu', cwd=tmp_path))
    assert new['step'] == 16
    records = [json.loads(line) for line in (run / 'evals.jsonl').read_text().splitlines()]
    assert [(r['step'], r['items']) for r in records] == [(8, 'all 5'), (8, '3 of 5, evenly spaced'), (16, 'all 5')]


def test_the_record_is_kept_once_when_two_evals_finish_together(tmp_path):
    from trainer.evaluate import record_once
    path = tmp_path / 'evals.jsonl'
    path.write_text('{"task": "hellaswag", "checkpoint": "a.pt", "scorer": "native", "items": "all 5"}\n{"torn')
    record = {'task': 'hellaswag', 'checkpoint': 'b.pt', 'scorer': 'native', 'items': 'all 5', 'acc': 0.5}
    assert record_once(path, record) is True
    assert record_once(path, dict(record, acc=0.7)) is False
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])['acc'] == 0.5  # the torn line stayed apart


def test_a_missing_eval_set_is_one_line(tmp_path):
    run = tiny_run(tmp_path / 'run')
    proc = evaluate(str(run), '--device', 'cpu', cwd=tmp_path, SLMJOBS_DATA_ROOT=str(tmp_path / 'data'))
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'slmjobs eval-data fetch hellaswag' in proc.stderr and not (run / 'evals.jsonl').exists()


@pytest.mark.parametrize('args,needle', [
    (['--items', '0'], '--items 0'),
    (['--tasks', ','], '--tasks'),
    (['--device', 'tpu'], '--device tpu'),
    (['--checkpoint', 'nope.pt', '--all-kept'], '--all-kept'),
    (['--data', 'missing.jsonl'], 'missing.jsonl: no such file'),
])
def test_bad_options_are_one_line(tmp_path, args, needle):
    run = tiny_run(tmp_path / 'run')
    proc = evaluate(str(run), *args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and needle in proc.stderr, proc.stderr
    assert not (run / 'evals.jsonl').exists()


def test_a_malformed_data_file_is_one_line_naming_the_line(tmp_path):
    run = tiny_run(tmp_path / 'run')
    items = synthetic_items(3)
    items[1]['endings'] = items[1]['endings'][:3]
    data = write_items(tmp_path / 'items.jsonl', items)
    proc = evaluate(str(run), '--data', str(data), '--device', 'cpu', cwd=tmp_path)
    assert proc.returncode == 2 and 'line 2' in proc.stderr and proc.stderr.count('\n') == 1, proc.stderr
