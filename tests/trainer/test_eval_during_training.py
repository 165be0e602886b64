"""eval.every: HellaSwag scored inside the real training worker (CPU, tiny model), on synthetic
items written by the test.

Shown: a `hellaswag` record in metrics.jsonl at every eval.every steps and at the last step, the
`eval` (val_loss) record of the same step kept beside it (also through slmjobs' reader), the
subset named in each record, scores equal to `python -m trainer.evaluate` on the same
checkpoint afterwards, the scores of checkpoints pruned since still there, 2 ranks recording what
1 rank does; the hand-off counting the scoring's time; a missing eval set refused before
training (exit 2, one line, nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path

from eval_items import synthetic_items, write_items
from test_hellaswag import evaluate, ok

EVERY = 8  # MAX_STEPS = 24: scored at 8, 16, 24
WIDE = 'model.block_size=128'  # the items' endings need more than SMALL's 32 positions


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def test_hellaswag_every_n_steps_beside_val_loss_and_after_pruning(worker, tmp_path):
    data = write_items(tmp_path / 'items.jsonl', synthetic_items(9, seed=21))
    run = worker.run('hs', WIDE, f'eval.every={EVERY}', 'eval.items=5', f'eval.data={data}',
                     'train.eval_every=8', 'checkpoint.keep=2')
    records = history(run.run_dir)
    scores = [r for r in records if r['event'] == 'hellaswag']
    assert [r['step'] for r in scores] == [8, 16, 24]
    for r in scores:
        assert (r['n'], r['items']) == (5, '5 of 9, evenly spaced')
        assert 0.0 <= r['acc_norm'] <= 1.0 and r['link'] is None and 'acc_norm_tokens' in r
    assert [r['step'] for r in records if r['event'] == 'eval'] == [8, 16, 24]  # val_loss not hidden
    assert 'hellaswag step 8 | acc_norm' in run.output()

    from slmjobs.history import current_history
    current = current_history(run.run_dir)
    assert sorted((r['step'], r['event']) for r in current if r['event'] in ('eval', 'hellaswag')) == \
        [(s, e) for s in (8, 16, 24) for e in ('eval', 'hellaswag')]

    kept = sorted(p.name for p in (run.run_dir / 'checkpoints').glob('ep*-rank0.pt'))
    assert kept == ['ep0-ba20-rank0.pt', 'ep0-ba24-rank0.pt']  # ba8 and ba16 pruned, their scores kept

    [offline] = ok(evaluate(str(run.run_dir), '--data', str(data), '--items', '5', '--device', 'cpu',
                            cwd=tmp_path))
    assert offline['step'] == 24
    for key in ('n', 'acc', 'acc_norm', 'acc_norm_tokens', 'truncated'):
        assert offline[key] == scores[-1][key], key


def test_two_ranks_record_what_one_rank_does(worker, tmp_path):
    data = write_items(tmp_path / 'items.jsonl', synthetic_items(7, seed=22))
    overrides = (WIDE, 'eval.every=12', f'eval.data={data}')
    one = history(worker.run('one', *overrides).run_dir)
    two = history(worker.run('two', *overrides, ranks=2).run_dir)
    pick = lambda records: [(r['step'], r['n'], r['acc'], r['acc_norm']) for r in records  # noqa: E731
                            if r['event'] == 'hellaswag']
    assert [s for s, *_ in pick(one)] == [12, 24] and pick(one) == pick(two)


def test_the_hand_off_counts_the_scoring_time(worker, tmp_path):
    """A scoring that would take 1000 s does not fit before a deadline 10 minutes away: the link
    hands off at the batch before the first scored step, and the reason names it."""
    import time
    data = write_items(tmp_path / 'items.jsonl', synthetic_items(3, seed=23))
    run = worker.run('late', WIDE, f'eval.every={EVERY}', f'eval.data={data}', 'eval.seconds_guess=1000',
                     expect=75, env={'SLMJOBS_DEADLINE': str(time.time() + 600)})
    assert run.steps()[-1] == EVERY - 1
    assert 'hellaswag 1000.00 s' in run.output()
    assert not [r for r in history(run.run_dir) if r['event'] == 'hellaswag']


def test_a_missing_eval_set_is_refused_before_training(worker, tmp_path):
    run = worker.run('nodata', WIDE, f'eval.every={EVERY}', expect=2,
                     env={'SLMJOBS_DATA_ROOT': str(tmp_path / 'empty-root')})
    errors = [line for line in run.output().splitlines() if 'error' in line]
    assert len(errors) == 1 and 'slmjobs eval-data fetch hellaswag' in errors[0], run.output()
    assert not (run.run_dir / 'checkpoints').exists()


def test_a_malformed_eval_set_is_refused_before_training(worker, tmp_path):
    items = synthetic_items(3, seed=24)
    items[2]['label'] = 7
    data = write_items(tmp_path / 'items.jsonl', items)
    run = worker.run('bad', WIDE, f'eval.every={EVERY}', f'eval.data={data}', expect=2)
    errors = [line for line in run.output().splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'line 3' in errors[0] and 'label 7' in errors[0], run.output()
    assert not (run.run_dir / 'checkpoints').exists()
