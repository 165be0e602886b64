"""A preparation SIGKILLed at random points (one in the middle of writing a piece's shards) and run
again with the same command ends with exactly the dataset an uninterrupted run writes; a different
command over an unfinished preparation is refused, saying what differs.

Real processes, real SIGKILL of the whole process group (the pool's workers too). The kill points
are chosen by a seeded random generator (the seed is in every failure message) among the pieces
the journal records; SLMJOBS_PREPARE_HOLD_PIECE (a testing aid of trainer.prepare) parks the
preparation half-way through writing one piece, so that kill lands mid-write for certain.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import wait_until
from test_prepare import REPO, corpus_jsonl, dataset_files, run_prepare

SEQ_LEN = '64'
PIECE_CHARS = '20000'  # ~150 pieces of the ~3 MB corpus, each fsynced: not over before a poll sees it


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
    return corpus_jsonl(tmp_path_factory.mktemp('corpus') / 'docs.jsonl', documents=200)


def command(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ['--source', str(corpus), '--tokenizer', 'bytes', '--seq-len', SEQ_LEN,
            '--piece-chars', PIECE_CHARS, '--out', str(out), *extra]


@pytest.fixture(scope='module')
def reference(corpus, tmp_path_factory) -> Path:
    """Uninterrupted, one worker (the killed runs use two: the result must not depend on it)."""
    out = tmp_path_factory.mktemp('reference') / 'ds'
    proc = run_prepare(*command(corpus, out, '--workers', '1'))
    assert proc.returncode == 0, proc.stderr
    return out


class Preparation:
    """`python -m trainer.prepare` in its own process group, stderr to a file."""

    def __init__(self, args: list[str], log: Path, **env: str):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, '-m', 'trainer.prepare', *args],
                                     env=dict(os.environ, PYTHONPATH=str(REPO), **env),
                                     stdout=subprocess.DEVNULL, stderr=log.open('w'), start_new_session=True)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # still unreaped, so the group id is still ours
        self.proc.wait()

    def stderr(self) -> str:
        return self.log.read_text()


def journal_lines(out: Path) -> int:
    try:
        return (out.with_name(f'.{out.name}.partial') / 'pieces.jsonl').read_bytes().count(b'\n')
    except FileNotFoundError:
        return 0


def test_killed_at_random_points_and_rerun_equals_an_uninterrupted_run(corpus, reference, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    pieces = json.loads((reference / 'dataset.json').read_text())['pieces']
    out = tmp_path / 'ds'
    partial = tmp_path / '.ds.partial'
    args = command(corpus, out, '--workers', '2')
    why = f'(seed {seed})'

    # 1. Mid-write: piece `hold`'s train shards are on disk, unrenamed and unrecorded.
    hold = rng.randrange(1, 8)
    prep = Preparation(args, tmp_path / 'hold.log', SLMJOBS_PREPARE_HOLD_PIECE=str(hold))
    wait_until(lambda: 'holding in piece' in prep.stderr() or not prep.running(), 120, 'the hold')
    assert prep.running(), prep.stderr()
    assert (partial / 'train' / f'piece-{hold:06d}.tmp').is_dir(), why
    prep.kill()
    assert journal_lines(out) == 1 + hold, why  # the header, then pieces 0..hold-1

    # 2. Wherever the journal has reached a random piece, then a random moment later.
    kills = 1
    for target in sorted(rng.sample(range(hold + 2, pieces - 6), 3)):
        prep = Preparation(args, tmp_path / f'kill-{target}.log')
        wait_until(lambda: journal_lines(out) > target or not prep.running(), 120, f'piece {target}',
                   interval=0.002)
        time.sleep(rng.uniform(0, 0.05))
        if prep.running():
            prep.kill()
            kills += 1
    assert kills >= 3, f'only {kills} kills landed before the end {why}'
    assert not out.exists(), f'a killed preparation looks finished {why}'

    # 3. A torn last journal line (killed while appending it) is dropped, that piece redone.
    journal = partial / 'pieces.jsonl'
    text = journal.read_bytes()
    journal.write_bytes(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])

    done = run_prepare(*args)
    assert done.returncode == 0, f'{done.stderr} {why}'
    info = json.loads((out / 'dataset.json').read_text())
    assert info['resumed_at_piece'] > hold, why
    assert dataset_files(out) == dataset_files(reference), f'resumed dataset differs {why}'
    assert not partial.exists()


def test_a_different_command_over_an_unfinished_one_is_refused_naming_the_difference(corpus, reference, tmp_path):
    out = tmp_path / 'ds'
    args = command(corpus, out, '--workers', '2')
    prep = Preparation(args, tmp_path / 'hold.log', SLMJOBS_PREPARE_HOLD_PIECE='3')
    wait_until(lambda: 'holding in piece' in prep.stderr() or not prep.running(), 120, 'the hold')
    assert prep.running(), prep.stderr()

    concurrent = run_prepare(*args)  # the same command while the first still runs
    assert concurrent.returncode == 2 and 'another preparation is writing it now' in concurrent.stderr, concurrent.stderr
    prep.kill()

    other = run_prepare(*command(corpus, out, '--workers', '2', '--seq-len', '32'))
    assert other.returncode == 2, other.stderr
    assert other.stderr.count('\n') == 1 and 'seq_len: 64 there, 32 now' in other.stderr, other.stderr
    assert journal_lines(out) == 4, 'the refused command touched the unfinished preparation'

    forced = run_prepare(*command(corpus, out, '--workers', '1', '--seq-len', '32', '--force'))
    assert forced.returncode == 0, forced.stderr
    info = json.loads((out / 'dataset.json').read_text())
    assert info['seq_len'] == 32 and info['resumed_at_piece'] == 0


def test_a_hub_stream_resumes_from_its_state_without_the_consumed_part(tmp_path, monkeypatch):
    """`datasets` streaming, offline: the json builder over a local file stands in for the hub."""
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    from trainer.corpus import HubSource
    data = tmp_path / 'records.jsonl'
    data.write_text(''.join(json.dumps({'text': f'record {i}'}) + '\n' for i in range(3000)))
    first = HubSource('json', None, 'train', 'text', data_files=[str(data)])
    docs = first.documents()
    consumed = [next(docs) for _ in range(1234)]
    position = json.loads(json.dumps(first.position()))  # as the journal stores it
    rest = list(HubSource('json', None, 'train', 'text', data_files=[str(data)]).documents(position))
    assert consumed[-1] == 'record 1233' and rest[0] == 'record 1234' and len(rest) == 3000 - 1234


def group_members(pgid: int) -> dict[int, str]:
    """pid -> command line of every live (not zombie) process in process group `pgid`."""
    found = {}
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
            cmdline = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
        except OSError:  # gone meanwhile
            continue
        state, _, group = stat.rsplit(')', 1)[1].split()[:3]
        if int(group) == pgid and state != 'Z':
            found[int(entry.name)] = cmdline
    return found


def test_killing_slmjobs_prepare_ends_every_process_of_the_preparation(corpus, tmp_path):
    """The pid the user sees is the preparation itself (slmjobs execs the worker) and its pool's
    workers die with it: one SIGKILL to that pid, and no process of the preparation runs on."""
    log = tmp_path / 'stderr'
    proc = subprocess.Popen([sys.executable, '-m', 'slmjobs', 'prepare',
                             *command(corpus, tmp_path / 'ds', '--workers', '2')],
                            env=dict(os.environ, PYTHONPATH=str(REPO), SLMJOBS_PREPARE_HOLD_PIECE='3'),
                            stdout=subprocess.DEVNULL, stderr=log.open('w'), start_new_session=True)
    try:
        wait_until(lambda: 'holding in piece 3' in log.read_text(), 120, 'the preparation to reach piece 3')
        members = group_members(proc.pid)
        assert 'trainer.prepare' in members[proc.pid], members  # the same pid, now the worker
        assert len(members) >= 3, members  # and its two tokenizing processes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not group_members(proc.pid), 30, 'every process of the preparation to end')
    finally:  # whatever the test's own kill left
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
