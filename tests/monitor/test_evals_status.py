"""HellaSwag in `slmjobs status` (latest acc_norm and its step) and `slmjobs plot --metric
hellaswag` (the scores during and after training, the preset's published reference line), from
the files the worker writes: metrics.jsonl `hellaswag` records and evals.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import make_run_dir

REPO = Path(__file__).resolve().parents[2]


def slmjobs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, '-m', 'slmjobs', *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def scored_run(root: Path, name: str, model: str = 'tiny') -> Path:
    run_dir = make_run_dir(root / name)
    if model != 'tiny':  # the preset the run trained, as run.yaml records it
        text = (run_dir / 'run.yaml').read_text().replace('model: tiny', f'model: {model}')
        (run_dir / 'run.yaml').write_text(text)
        (run_dir / 'run-summary.json').unlink(missing_ok=True)
    history = [{'event': 'start', 'link': 1, 'step': 0},
               {'event': 'train', 'link': 1, 'step': 8, 'loss': 3.0},
               {'event': 'eval', 'link': 1, 'step': 8, 'val_loss': 3.1},
               {'event': 'hellaswag', 'link': 1, 'step': 8, 'acc_norm': 0.25, 'acc': 0.24, 'n': 500},
               {'event': 'hellaswag', 'link': 1, 'step': 16, 'acc_norm': 0.27, 'acc': 0.25, 'n': 500},
               {'event': 'train', 'link': 1, 'step': 16, 'loss': 2.5}]
    (run_dir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in history))
    return run_dir


def test_status_shows_the_latest_score_during_then_after_training(tmp_path):
    root = Path(os.environ['SLMJOBS_RUNS_ROOT'])
    run_dir = scored_run(root, 'scored')
    proc = slmjobs('status', 'scored', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert 'HELLASWAG' in header and '0.2700@16' in row

    record = {'task': 'hellaswag', 'scorer': 'native', 'checkpoint': 'ep0-ba24-rank0.pt', 'step': 24,
              'items': 'all 10042', 'acc_norm': 0.2913, 'acc': 0.27}
    (run_dir / 'evals.jsonl').write_text(json.dumps(record) + '\n{"torn')
    row = json.loads(slmjobs('status', 'scored', '--json', cwd=tmp_path).stdout)[0]
    assert row['hellaswag'] == {'acc_norm': 0.2913, 'step': 24}


def test_a_run_without_scores_shows_a_dash(tmp_path):
    make_run_dir(Path(os.environ['SLMJOBS_RUNS_ROOT']) / 'plain')
    row = json.loads(slmjobs('status', 'plain', '--json', cwd=tmp_path).stdout)[0]
    assert row['hellaswag'] is None


def test_the_plot_draws_the_scores_and_the_presets_reference(tmp_path):
    from slmjobs import plot
    from slmjobs.evals import HELLASWAG_REFERENCES
    run_dir = scored_run(tmp_path, 'gpt2-run', model='gpt2')
    (run_dir / 'evals.jsonl').write_text(json.dumps(
        {'task': 'hellaswag', 'scorer': 'native', 'step': 24, 'acc_norm': 0.29, 'checkpoint': 'c'}) + '\n')
    figure = plot.draw(plot.load_histories([run_dir], 'hellaswag'), 'hellaswag', 'step')
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines['gpt2-run'].get_ydata()) == [0.25, 0.27, 0.29]
    reference = [line for label, line in lines.items() if label.startswith('OpenAI GPT-2 124M')]
    assert len(reference) == 1 and list(reference[0].get_ydata()) == [HELLASWAG_REFERENCES['gpt2']['acc_norm']] * 2

    out = tmp_path / 'hs.png'
    proc = slmjobs('plot', str(run_dir), '--metric', 'hellaswag', '-o', str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_reference_table_is_the_sourced_one():
    from slmjobs.evals import HELLASWAG_REFERENCES
    assert HELLASWAG_REFERENCES['gpt2']['acc_norm'] == 0.3114 and HELLASWAG_REFERENCES['gpt2']['acc'] == 0.2892
    assert HELLASWAG_REFERENCES['gpt2']['completion_acc_norm'] == 0.2955
    assert HELLASWAG_REFERENCES['gpt2-xl']['acc_norm'] == 0.5089
