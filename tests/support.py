"""Helpers shared by test modules: polling instead of fixed sleeps, small job scripts, and the
real worker run as a subprocess (python -m trainer.train, or through the `composer` launcher)
the way a job script does: `trap '' USR1 USR2` in a bash wrapper, in a new process group so
signals can go to the whole group as on Grid Engine. The fixtures built on them are in
tests/trainer/conftest.py."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


COLLECTED_TIERS = pytest.StashKey[dict]()  # nodeid -> its tiers, for every collected test (conftest.py)

# How `pytest -n 4 --dist loadfile` (scripts/test.sh) runs side by side. A module never splits, so
# its module-scoped fixtures (reference runs, campaigns) are built once, and each module is a unit
# of its own, except those that submit to a real scheduler: they run one at a time in one of two
# lanes, so that each lane holds at most 4 of each test cluster's 8 GPUs (scripts/sge-up.sh,
# scripts/slurm-up.sh) and its chains never wait for the other lane's. Lane "a" holds the chain
# campaign of test_chain_e2e.py (4 GPUs on each scheduler at once). test_tiers.py checks that
# every module using a real scheduler is listed here; conftest.py hands the lanes to pytest-xdist.
SCHEDULER_LANES = {
    "tests/chain/test_chain_e2e.py": "a",
    "tests/backends/test_sge_real.py": "a", "tests/backends/test_sge_up.py": "a",
    "tests/backends/test_slurm_real.py": "a", "tests/backends/test_slurm_up.py": "a",
    "tests/launcher/test_eval_kind.py": "a", "tests/launcher/test_launch.py": "a",
    "tests/monitor/test_monitor_real.py": "a",
    "tests/chain/test_scheduler_faults.py": "b", "tests/chain/test_sweep_e2e.py": "b",
    "tests/chain/test_submitit.py": "b", "tests/chain/test_kind_plugin.py": "b",
    "tests/chain/test_prepare_chain.py": "b", "tests/chain/test_run_command_chain.py": "b",
}


# ---- prepared datasets (tests/trainer/test_prepare*.py, tests/chain/test_prepare_chain.py) ----

# dataset.json's keys about the run that made it, not the data
RUN_FIELDS = ('workers', 'resumed_at_piece', 'tokens_this_run', 'seconds', 'tokenize_seconds',
              'tokenize_cpu_seconds', 'tokenize_main_cpu_seconds', 'created_at')


def corpus_jsonl(path: Path, documents: int = 120) -> Path:
    """The first documents of the built-in corpus (~2 MB for 120) as JSONL."""
    import json

    from trainer.corpus import builtin_documents

    with path.open('w') as f:
        for _, text in zip(range(documents), builtin_documents()):
            f.write(json.dumps({'text': text}) + '\n')
    return path


def dataset_files(out: Path) -> dict:
    """Every file's bytes; dataset.json without the fields that describe the run, not the data."""
    import json

    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file()}
    info = json.loads(files.pop('dataset.json'))
    for field in RUN_FIELDS:
        info.pop(field)
    files['dataset.json'] = info
    return files


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """Return predicate()'s first truthy value; fail the test (never skip) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def job_script(directory: Path, name: str, body: str, *options: str) -> Path:
    """A minimal Grid Engine job script (`#$` options), for the backends' own tests."""
    lines = ["#!/bin/bash", f"#$ -N {name}", f"#$ -o {directory}/{name}.out", "#$ -j y",
             *[f"#$ {o}" for o in options], body, ""]
    path = directory / f"{name}.sh"
    path.write_text("\n".join(lines))
    return path


def train_spec(model: str = "tiny", overrides=(), **request) -> dict:
    """launch.resolve of a training request: `request` are launch.Request's fields."""
    from slmjobs import launch

    return launch.resolve(launch.Request(options={"model": model, "overrides": list(overrides)},
                                         **request))


def sbatch_script(directory: Path, name: str, body: str, *options: str) -> Path:
    """A minimal SLURM job script (`#SBATCH` options), for the backends' own tests."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={directory}/{name}.out",
             "#SBATCH --time=00:10:00", *[f"#SBATCH {o}" for o in options], body, ""]
    path = directory / f"{name}.sh"
    path.write_text("\n".join(lines))
    return path


def make_run_dir(path: Path, scheduler: str = "local", gpus: int = 1, **chain) -> Path:
    """A run directory at `path` as `slmjobs launch` writes it (run.yaml through the real
    writers, for the shipped `scheduler` profile), with no job submitted yet. `chain`
    overrides the profile's limits (max_links=2, ...)."""
    from slmjobs import rundir

    spec = train_spec(gpus=gpus, cluster=scheduler, name=path.name)
    spec.update(run_dir=str(path), chain={**spec["chain"], **chain})
    rundir.create(path, spec)
    return path


# ---- the worker (tests/trainer) ----

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
COMPOSER = str(Path(sys.executable).with_name('composer'))
WRAPPERS = REPO / 'tests' / 'trainer'  # deadline_in.py, kill_in_save.py, kill_at_step.py

# A very small model on 33-token windows: a step is a few milliseconds, startup dominates.
SMALL = [
    'model=tiny', 'model.n_layer=1', 'model.n_head=2', 'model.n_embd=32', 'model.block_size=32',
    'data.num_workers=0', 'train.global_batch_size=4', 'train.warmup_steps=4',
    'train.eval_every=0', 'train.eval_batches=2', 'train.log_every=1',
    'checkpoint.save_every_batches=4', 'checkpoint.save_every_seconds=0', 'checkpoint.keep=-1',
    'wandb.enabled=false',
]
MAX_STEPS = 24
STEP_LINE = re.compile(r'\] step (\d+)/(\d+) \| loss')


class Run:
    """One start of the worker; output goes to a file the test can watch while it runs."""

    def __init__(self, run_dir: Path, overrides: list[str], env: dict, ranks: int, wrapper: str | None):
        self.run_dir = run_dir
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir.parent / f'{run_dir.name}.{time.time_ns()}.log'
        if ranks > 1:
            cmd = [COMPOSER, '-n', str(ranks), '-m', 'trainer.train']
        elif wrapper:
            cmd = [PYTHON, str(WRAPPERS / wrapper)]
        else:
            cmd = [PYTHON, '-m', 'trainer.train']
        cmd += overrides + [f'run_name={run_dir.name}', f'run_dir={run_dir}']
        script = "trap '' USR1 USR2 TERM; " + ' '.join(shlex.quote(c) for c in cmd)
        self.log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(['bash', '-c', script], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=run_dir.parent, env=env, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def steps(self) -> list[int]:
        return [int(m.group(1)) for m in STEP_LINE.finditer(self.output())]

    def wait_for_step(self, step: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(s >= step for s in self.steps()):
                return
            if self.proc.poll() is not None:
                pytest.fail(f'worker exited {self.proc.returncode} before step {step}:\n{self.output()[-3000:]}')
            time.sleep(0.05)
        self.dump_stacks()
        pytest.fail(f'no step {step} within {timeout} s:\n{self.output()[-6000:]}')

    def dump_stacks(self) -> None:
        """A stuck worker: SIGABRT makes faulthandler (PYTHONFAULTHANDLER=1) print every
        thread's stack into the log before the process dies."""
        try:
            os.killpg(self.proc.pid, signal.SIGABRT)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass

    def signal_group(self, sig: int) -> None:
        assert self.proc.poll() is None, 'the worker is gone: its group id may be reused'
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            self.kill()
            pytest.fail(f'worker still running after {timeout} s:\n{self.output()[-6000:]}')
        self.log.close()
        return rc

    def kill(self) -> None:
        # Only while the worker is unreaped: once waited for, its pid (= its process-group id)
        # can be reused by any process group leader, sge_execd included (pids wrap at 32768).
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Worker:
    """Starts runs with the SMALL config on the session dataset; kills leftovers at the end."""

    def __init__(self, dataset: Path, root: Path):
        self.dataset = dataset
        self.root = root
        self.runs: list[Run] = []

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env.pop('SLMJOBS_DEADLINE', None)
        env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
        env['WANDB_MODE'] = 'offline'  # never the network, whatever the machine's wandb setup
        env['PYTHONFAULTHANDLER'] = '1'  # stacks of a stuck worker (see Run.dump_stacks)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, name: str, *overrides: str, max_steps: int = MAX_STEPS, ranks: int = 1,
              env: dict | None = None, wrapper: str | None = None, run_dir: Path | None = None) -> Run:
        args = SMALL + [f'data.path={self.dataset}', f'train.max_steps={max_steps}', *overrides]
        run = Run(run_dir or self.root / name, args, self.env(**(env or {})), ranks, wrapper)
        self.runs.append(run)
        return run

    def run(self, name: str, *overrides: str, expect: int | None = 0, **kw) -> Run:
        run = self.start(name, *overrides, **kw)
        rc = run.wait()
        if expect is not None:
            assert rc == expect, f'exit {rc}, expected {expect}:\n{run.output()[-4000:]}'
        return run

    def cleanup(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                run.kill()


def model_weights(run_dir: Path) -> dict:
    import torch
    state = torch.load(run_dir / 'checkpoints' / 'latest-rank0.pt', map_location='cpu', weights_only=False)
    return state['state']['model']


def assert_bitwise_equal(weights: dict, reference: dict) -> None:
    """The one comparer: the same tensors, dtype and every bit (model_weights of two runs)."""
    import torch
    assert sorted(weights) == sorted(reference)
    different = [k for k in reference if weights[k].dtype != reference[k].dtype
                 or not torch.equal(weights[k], reference[k])]
    assert not different, f'{len(different)} tensors differ from the reference, e.g. {different[:3]}'


def checkpoint_step(run_dir: Path) -> int:
    target = os.readlink(run_dir / 'checkpoints' / 'latest-rank0.pt')
    return int(re.search(r'-ba(\d+)-', target).group(1))


def read_progress(run_dir: Path) -> dict:
    import json
    return json.loads((run_dir / 'progress.json').read_text())


@contextmanager
def tmpfs(mount: Path, size: str):
    """A real, small filesystem at `mount` (a full disk or quota, for real). Needs root, which
    CI and scripts/test.sh have: it fails, never skips, without."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root (CI and scripts/test.sh do)")
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


# ---- the one fake scheduler (unit tests of the chain and of status) ----

def fake_scheduler(real=None, gone: str = "ended", job_id_variable: str | None = None):
    """A backend whose jobs move only when a test says so, and which remembers what it was
    asked. It is the `real` backend class (its profile keys, header, environment; default the
    bare interface) with the job operations replaced:

        states[job_id]     "queued"/"held"/"running"/"ended" or a Job; a job not there is `gone`
        accounted[job_id]  what accounting() answers (None: not accounted yet)
        failures           exceptions the next submissions raise, in order
        fail               query() raises as a scheduler that cannot be reached
        on_submit(job_id), on_cancel()   hooks
    and records submitted (each hold_on), attempts, queries, accounting_calls, cancelled."""
    from slmjobs.backends import Backend, Job, SchedulerError

    class FakeScheduler(real or Backend):
        kind = "fake" if real is None else real.kind
        JOB_ID_VARIABLE = job_id_variable if real is None else real.JOB_ID_VARIABLE

        def __init__(self):
            self.next_id = 100
            self.states, self.accounted = {}, {}
            self.failures, self.fail = [], False
            self.on_submit = self.on_cancel = None
            self.submitted, self.queries, self.accounting_calls, self.cancelled = [], [], [], []
            self.attempts = 0
            self.user_held, self.released = set(), []

        def submit(self, script, hold_on=None, held=False):
            self.attempts += 1
            if self.failures:
                raise self.failures.pop(0)
            self.next_id += 1
            job_id = str(self.next_id)
            self.submitted.append(hold_on)
            self.states[job_id] = "held" if hold_on or held else "queued"
            if held:
                self.user_held.add(job_id)
            if self.on_submit:
                self.on_submit(job_id)
            return job_id

        def release(self, job_ids, after=None):
            for job_id in map(str, job_ids):
                self.user_held.discard(job_id)
                self.released.append((job_id, after))
                if self.states.get(job_id) == "held":
                    self.states[job_id] = "held" if after else "queued"

        def query(self, job_ids):
            if self.fail:
                raise SchedulerError("qstat failed (exit 1): unable to contact qmaster")
            self.queries.append(list(job_ids))
            found = {j: self.states.get(j, gone) for j in job_ids}
            return {j: s if isinstance(s, Job) else Job(job_id=j, state=s) for j, s in found.items()}

        def accounting(self, job_id):
            self.accounting_calls.append(job_id)
            return self.accounted.get(job_id)

        def cancel(self, job_ids):
            self.cancelled += [str(j) for j in job_ids]
            for job_id in job_ids:
                self.states[job_id] = "ended"
            if self.on_cancel:
                self.on_cancel()

        def pending(self) -> list[str]:
            return sorted(j for j, s in self.states.items() if s in ("queued", "held"))

    return FakeScheduler()
