"""The preparation as a job would run it, without a scheduler: it keeps to $SLMJOBS_DEADLINE (exit
75 after the last piece that fits, the same command continues from the journal, the result is the
foreground preparation's byte for byte), writes its heartbeat for status, and `--plan` says what it
will produce without preparing anything. (On real schedulers: tests/chain/test_prepare_chain.py.)

Counts follow from the deadline and `--debug-piece-sleep`, never from the machine's speed: every
piece sleeps PIECE_SLEEP seconds, so a run given BUDGET seconds records at most BUDGET / PIECE_SLEEP
pieces, and at least one (the first piece always runs: nothing is known about its length yet).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_prepare import REPO, dataset_files, run_prepare

PIECE_SLEEP = 1.0
BUDGET = 4.5  # seconds from a run's start to its deadline: at most 4 pieces of >= 1 s
ARGS = ['--source', 'builtin', '--max-documents', '30', '--seq-len', '64', '--piece-chars', '8000',
        '--workers', '1']


def prepare_until(out: Path, deadline: float, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'SLMJOBS_DEADLINE': f'{deadline:.3f}'}
    return subprocess.run([sys.executable, '-m', 'trainer.prepare', *ARGS, '--out', str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('reference') / 'ds'
    proc = run_prepare(*ARGS, '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_preparation_keeps_to_its_deadline_and_the_next_run_continues_to_the_same_bytes(reference,
                                                                                          tmp_path):
    out, heartbeat = tmp_path / 'ds', tmp_path / 'progress.json'
    pieces = json.loads((reference / 'dataset.json').read_text())['pieces'] - 1  # less the final padding
    assert pieces >= 8, pieces  # enough for 2 hand-offs at most 4 pieces a run
    statuses, recorded = [], []
    while not statuses or statuses[-1] == 75:
        assert len(statuses) < pieces + 1, statuses  # every run records at least one piece
        proc = prepare_until(out, time.time() + BUDGET, '--debug-piece-sleep', str(PIECE_SLEEP),
                             '--progress-file', str(heartbeat))
        statuses.append(proc.returncode)
        beat = json.loads(heartbeat.read_text())
        recorded.append(beat['pieces'])
        if proc.returncode == 75:
            assert beat['state'] == 'handed_off' and 'handed off after piece' in proc.stderr
            assert not out.exists()  # unfinished: still in .ds.partial
    assert statuses[-1] == 0, statuses[-1:] + [proc.stderr]
    assert len(statuses) >= math.ceil(pieces / int(BUDGET / PIECE_SLEEP))
    per_run = [b - a for a, b in zip([0] + recorded, recorded[:-1])]
    assert all(1 <= n <= int(BUDGET / PIECE_SLEEP) for n in per_run), per_run
    assert dataset_files(out) == dataset_files(reference)
    beat = json.loads(heartbeat.read_text())
    assert beat['state'] == 'finished' and beat['documents'] == beat['total_documents'] == 30
    assert beat['tokens'] == sum(s['tokens'] for s in
                                 json.loads((out / 'dataset.json').read_text())['splits'].values())


def test_the_heartbeat_says_documents_tokens_rate_and_an_eta_while_it_runs(tmp_path):
    out, heartbeat = tmp_path / 'ds', tmp_path / 'progress.json'
    proc = prepare_until(out, time.time() + 2.5, '--debug-piece-sleep', '1',
                         '--progress-file', str(heartbeat))
    assert proc.returncode == 75, proc.stderr
    beat = json.loads(heartbeat.read_text())
    assert beat['state'] == 'handed_off' and beat['pieces'] >= 1 and beat['out'] == str(out)
    assert 0 < beat['documents'] < beat['total_documents'] == 30
    assert beat['tokens'] > 0 and beat['tokens_per_sec'] > 0
    assert 0 < beat['fraction_done'] < 1 and beat['eta_seconds'] > 0


def test_no_deadline_set_runs_to_the_end_and_a_bad_one_is_refused(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'SLMJOBS_DEADLINE': 'tomorrow'}
    proc = subprocess.run([sys.executable, '-m', 'trainer.prepare', *ARGS, '--out', str(tmp_path / 'ds')],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: SLMJOBS_DEADLINE='tomorrow': must be epoch seconds (a number)"]
    assert not (tmp_path / 'ds').exists() and not (tmp_path / '.ds.partial').exists()


# --- the plan ----------------------------------------------------------------------------------

def plan(*args: str) -> subprocess.CompletedProcess:
    return run_prepare(*args, '--plan')


def test_the_plan_says_what_will_be_made_and_makes_nothing(tmp_path):
    out = tmp_path / 'data' / 'ds'
    proc = plan(*ARGS, '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {'out': str(out), 'seq_len': 64, 'window': 65,
                                       'tokenizer': {'kind': 'bytes', 'vocab_size': 257},
                                       'max_documents': 30, 'total_documents': 30}
    assert not (tmp_path / 'data').exists()
    gpt2 = plan('--source', 'builtin', '--tokenizer', 'gpt2', '--seq-len', '1024', '--out', str(out))
    assert json.loads(gpt2.stdout)['tokenizer'] == {'kind': 'gpt2', 'vocab_size': 50257}


def test_the_plan_refuses_what_the_preparation_would_refuse(tmp_path):
    bad = plan('--source', 'builtin', '--seq-len', '0', '--out', str(tmp_path / 'ds'))
    assert bad.returncode == 2 and bad.stderr.startswith('error: --seq-len 0')
    missing = plan('--source', '/nowhere/docs.jsonl', '--out', str(tmp_path / 'ds'))
    assert missing.returncode == 2
    assert missing.stderr.strip() == 'error: --source /nowhere/docs.jsonl: no such file or directory'
    # an unfinished preparation of other arguments is there: the run would refuse it
    started = prepare_until(tmp_path / 'ds', time.time() + 0.5, '--debug-piece-sleep', '1')
    assert started.returncode == 75, started.stderr
    other = plan('--source', 'builtin', '--max-documents', '31', '--seq-len', '64', '--piece-chars',
                 '8000', '--out', str(tmp_path / 'ds'))
    assert other.returncode == 2 and 'max_documents: 30 there, 31 now' in other.stderr


def test_a_dry_run_plan_names_what_is_not_on_this_machine(tmp_path):
    proc = plan('--source', '/projectnb/p/fineweb/a.parquet', '--tokenizer', '/projectnb/p/tok.json',
                '--out', '/projectnb/p/data/fw', '--plan-elsewhere')
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        'warning: --source /projectnb/p/fineweb/a.parquet: not on this machine; read when the job runs',
        'warning: --tokenizer /projectnb/p/tok.json: not on this machine; its vocabulary is not checked']
    planned = json.loads(proc.stdout)
    assert planned['out'] == '/projectnb/p/data/fw' and planned['tokenizer']['vocab_size'] is None
