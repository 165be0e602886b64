"""`slmjobs launch` and the CLI, through the real command in a subprocess.

Bad input: one line naming the value and what is allowed, exit 2, nothing submitted (a `qsub`
shim on PATH records any call), no run directory. The real path: launches on the real Grid
Engine and on the local backend, the script runs (its banner reaches the log), status/cancel.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from slmjobs import launch, ledger, rundir
from slmjobs.backends import ACTIVE_STATES, get_backend
from support import wait_until


@pytest.fixture(autouse=True)
def with_data(data_root):
    """Every launch here has the default dataset to find (SLMJOBS_DATA_ROOT)."""

REPO = Path(__file__).resolve().parents[2]


def bad_profile(tmp_path) -> str:
    path = tmp_path / "typo.yaml"
    path.write_text("scheduler: sge\nmax_gpus: 2\nwaltime_max: '12:00:00'\n")
    return str(path)


BAD_INPUTS = [
    (["launch", "gpt3"], "unknown model 'gpt3': allowed are gpt2, gpt2-large"),
    (["launch", "tiny", "--cluster", "nope"], "unknown cluster 'nope': allowed are demo, local, scc, sge, slurm"),
    (["launch", "tiny", "--cluster", "sge", "--gpus", "5"], "--gpus 5 is not allowed on cluster 'sge': allowed is 1 to 4"),
    (["launch", "tiny", "--gpus", "0"], "--gpus 0 is not allowed"),
    (["launch", "tiny", "--walltime", "12h"], "bad --walltime '12h': allowed is HH:MM:SS"),
    (["launch", "tiny", "--cluster", "scc", "--project", "p", "--walltime", "49:00:00"],
     "--walltime 49:00:00 is over the maximum for a GPU job on cluster 'scc': allowed is up to 48:00:00"),
    (["launch", "tiny", "--name", "1st"], "bad run name '1st'"),
    (["launch", "tiny", "--name", "a:b"], "bad run name 'a:b'"),
    (["launch", "tiny", "--name", "a b"], "bad run name 'a b'"),
    (["launch", "tiny", "--name", "x$(touch PWNED)"], "bad run name 'x$(touch PWNED)'"),
    (["launch", "tiny", "lr 3"], "malformed hydra override 'lr 3'"),
    (["launch", "tiny", "a=1\nb=2"], "malformed hydra override"),
    (["launch", "tiny", "=3"], "malformed hydra override '=3'"),
    (["launch", "tiny", "run_dir=/x"], "override 'run_dir=/x' is set by slmjobs"),
    (["launch", "tiny", "--cluster", "scc"], "cluster 'scc' requires a project"),
    (["launch", "tiny", "--max-links", "0"], "--max-links 0: allowed is 1 or more"),
    (["launch", "tiny", "--gpus", "two"], "'two' is not a valid integer"),
    (["launch", "tiny", "--no-such-flag"], "No such option '--no-such-flag'"),
    (["launch"], "Missing argument 'MODEL'"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a[1:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_nothing_submitted_no_run_dir(args, message, run_cli, qsub_spy,
                                                                    runs_root, tmp_path):
    # default profile: the Grid Engine one, so a submission would reach the qsub spy
    proc = run_cli(*args, env={"PATH": qsub_spy["PATH"], "SLMJOBS_CLUSTER": "sge"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("slmjobs: error: "), proc.stderr
    assert message in proc.stderr
    assert not qsub_spy["called"].exists()
    assert list(runs_root.iterdir()) == []
    assert not list(tmp_path.rglob("PWNED"))


def test_profile_with_a_mistyped_key(run_cli, tmp_path, runs_root):
    proc = run_cli("launch", "tiny", "--cluster", bad_profile(tmp_path))
    assert proc.returncode == 2
    assert "unknown key 'waltime_max'" in proc.stderr and "typo.yaml" in proc.stderr
    assert list(runs_root.iterdir()) == []


def test_no_qsub_on_path(run_cli, tmp_path, runs_root):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = run_cli("launch", "tiny", "--cluster", "sge", env={"PATH": str(empty)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "qsub not found on PATH" in proc.stderr and "scheduler: local" in proc.stderr
    assert list(runs_root.iterdir()) == []


# a value hydra accepts (quoted) that a shell would run if it reached one unquoted
HOSTILE = "wandb.project='$(touch PWNED)'"


def test_dry_run_prints_the_script_writes_nothing_needs_no_scheduler(run_cli, tmp_path, runs_root):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = run_cli("launch", "gpt2", "--gpus", "2", "--cluster", "scc", "--project", "myproj",
                   "--dry-run", HOSTILE, env={"PATH": str(empty)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash -l\n#$ -N gpt2-")
    assert "#$ -pe omp 8" in proc.stdout and "composer -n 2 -m trainer.train" in proc.stdout
    assert f"    {shlex.quote(HOSTILE)} \\" in proc.stdout
    assert list(runs_root.iterdir()) == [] and not list(tmp_path.rglob("PWNED"))


def test_scheduler_failure_after_the_run_dir_exists_removes_it(run_cli, qsub_spy, runs_root):
    proc = run_cli("launch", "tiny", "--cluster", "sge", "--name", "doomed", env={"PATH": qsub_spy["PATH"]})
    assert proc.returncode == 1
    assert proc.stderr.startswith("slmjobs: scheduler error:") and "shim refuses" in proc.stderr
    assert qsub_spy["called"].exists()  # it did try
    assert list(runs_root.iterdir()) == []


def test_validate_accepts_a_possible_request_and_rejects_an_impossible_one(sge_cluster, run_cli,
                                                                          tmp_path, runs_root):
    ok = run_cli("launch", "tiny", "--cluster", "sge", "--gpus", "2", "--validate", "--dry-run")
    assert ok.returncode == 0, ok.stderr
    assert "scheduler:" in ok.stderr and "#$ -l gpus=2" in ok.stdout
    # a profile that allows more GPUs than any host of the test cluster has (8)
    big = tmp_path / "big.yaml"
    big.write_text((REPO / "cluster" / "sge.yaml").read_text().replace("max_gpus: 4", "max_gpus: 16"))
    for extra in (["--dry-run"], []):
        bad = run_cli("launch", "tiny", "--cluster", str(big), "--gpus", "12", "--validate",
                      "train.global_batch_size=12", *extra)
        assert bad.returncode == 2, bad.stderr
        assert "the scheduler rejects this request" in bad.stderr and "no suitable queues" in bad.stderr
        assert bad.stderr.count("\n") == 1
    assert list(runs_root.iterdir()) == []


def test_list_clusters_shows_profiles_and_survives_a_broken_one(run_cli, config_dir):
    (config_dir / "clusters" / "broken.yaml").write_text("scheduler: pbs\nmax_gpus: 1\n")
    proc = run_cli("list-clusters")
    assert proc.returncode == 0, proc.stderr
    for name in ("local", "scc", "sge"):
        assert f" {name} " in proc.stdout
    assert "broken" in proc.stdout and "INVALID" in proc.stdout
    assert "needs a project" in proc.stdout  # scc's runs root without a project


def test_prepare_forwards_to_the_trainer_entry_point(run_cli):
    proc = run_cli("prepare", "--help")
    assert proc.returncode == 0 and "python -m trainer.prepare" in proc.stdout
    bad = run_cli("prepare", "--no-such-flag")
    assert bad.returncode != 0


def test_default_run_name_is_model_and_timestamp(run_cli):
    proc = run_cli("launch", "tiny", "--dry-run")
    name = proc.stdout.splitlines()[1].split()[-1]
    assert launch.RUN_NAME.match(name) and name.startswith("tiny-20")


def _launch_and_watch(run_cli, cluster, name, runs_root, extra=()):
    """Launch for real; check the record, the script == dry run, and the script running."""
    args = ["launch", "tiny", "--cluster", cluster, "--name", name, "--walltime", "00:30:00",
            *extra, "train.max_steps=4"]
    dry = run_cli(*args, "--dry-run")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    run_dir = runs_root / name
    first = ledger.read(run_dir)[0]
    assert first["event"] == "submitted" and first["link"] == 1 and first["hold_on"] is None
    assert f"run {name}: link 1 submitted as job {first['job_id']}" in proc.stdout
    for command in (f"slmjobs status {name}", f"slmjobs logs {name} --follow", f"slmjobs cancel {name}"):
        assert command in proc.stdout
    assert (run_dir / "scripts" / "link-001.sh").read_text() == dry.stdout
    spec = rundir.load_run(run_dir)
    assert spec["model"] == "tiny" and spec["cluster"]["name"] == cluster and spec["git_commit"]
    digest = json.loads((run_dir / rundir.SUMMARY_FILE).read_text())  # status reads no YAML
    assert digest["summary"] == rundir.summarize(spec)
    assert digest["run_yaml"] == rundir.status_stamps(run_dir)[0]
    # the scheduler ran the script: its banner is in the link's log (written via -o ... -j y)
    log = run_dir / "logs" / "link-001.log"
    banner = f"slmjobs: run {name} link 1 job {first['job_id']}"
    wait_until(lambda: log.exists() and banner in log.read_text(), 60, f"the banner in {log}",
               interval=0.2)
    return run_dir, first["job_id"]


def _cancel_and_check(run_cli, run_dir, cluster):
    name = run_dir.name
    logs = run_cli("logs", name)
    assert logs.returncode == 0 and f"slmjobs: run {name} link 1" in logs.stdout, logs.stderr
    again = run_cli("launch", "tiny", "--cluster", cluster, "--name", name)
    assert again.returncode == 2 and "belongs to an active run" in again.stderr, again.stderr
    proc = run_cli("cancel", name)
    assert proc.returncode == 0, proc.stderr
    backend = get_backend("sge" if cluster == "sge" else "local")

    def nothing_active():
        ids = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"]
        return all(job.state not in ACTIVE_STATES for job in backend.query(ids).values())

    wait_until(nothing_active, 60, "every job of the run to leave the queue", interval=0.2)
    status = run_cli("status", str(run_dir), "--json")  # a run named by its path
    assert status.returncode == 0, status.stderr
    row = json.loads(status.stdout)[0]
    assert row["name"] == name
    # the name stays taken: an old run is never reused
    taken = run_cli("launch", "tiny", "--cluster", cluster, "--name", name)
    assert taken.returncode == 2 and f"slmjobs resume {name}" in taken.stderr, taken.stderr
    assert rundir.load_run(run_dir)["name"] == name  # untouched
    # resume: a bad walltime is refused; a good one goes into run.yaml and the next link's script
    bad = run_cli("resume", name, "--walltime", "20m")
    assert bad.returncode == 2 and "bad --walltime '20m'" in bad.stderr, bad.stderr
    resumed = run_cli("resume", name, "--walltime", "00:20:00")
    assert resumed.returncode == 0, resumed.stderr
    assert f"run {name} resumed: next link submitted as job" in resumed.stdout
    assert rundir.load_run(run_dir)["walltime"] == "00:20:00"
    link = max(e["link"] for e in ledger.read(run_dir) if e["event"] == "submitted")
    assert "#$ -l h_rt=00:20:00" in rundir.script_path(run_dir, link).read_text()
    assert run_cli("cancel", name).returncode == 0


def test_real_launch_on_grid_engine(sge_cluster, run_cli, runs_root):
    run_dir, job_id = _launch_and_watch(run_cli, "sge", "l1-sge", runs_root)
    assert job_id.isdigit()
    _cancel_and_check(run_cli, run_dir, "sge")


def test_real_launch_on_the_local_backend(run_cli, runs_root):
    run_dir, _ = _launch_and_watch(run_cli, "local", "l1-local", runs_root)
    _cancel_and_check(run_cli, run_dir, "local")


def test_a_launcher_killed_at_any_moment_leaves_every_name_usable(run_cli, runs_root):
    """SIGKILL `slmjobs launch` at a range of moments: each name is then absent (and a new
    launch of it works), or a run that status lists and that runs, or that `resume` starts."""
    import signal
    import subprocess
    import sys
    import time

    outcomes = []
    for i, delay in enumerate((0.05, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.5)):
        name = f"killed{i}"
        proc = subprocess.Popen([sys.executable, "-m", "slmjobs", "launch", "tiny", "--cluster",
                                 "local", "--name", name, "train.max_steps=4"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_dir = runs_root / name
        assert not [p for p in runs_root.iterdir() if p.name.startswith(".")], delay
        outcomes.append("nothing" if not run_dir.exists() else "half-made"
                        if not rundir.is_run_dir(run_dir) else "run")
        if not rundir.is_run_dir(run_dir):  # nothing, or a half-made directory: launch anew
            again = run_cli("launch", "tiny", "--cluster", "local", "--name", name,
                            "train.max_steps=4")
            assert again.returncode == 0, (delay, again.stderr)
        (row,) = json.loads(run_cli("status", name, "--json").stdout)
        if not [e for e in ledger.read(run_dir) if e["event"] == "submitted"]:
            outcomes[-1] = "run, nothing submitted"
            assert row["state"] == "new" and f"slmjobs resume {name}" in run_cli("status", name).stdout
            resumed = run_cli("resume", name)
            assert resumed.returncode == 0, (delay, resumed.stderr)
        links = [e["link"] for e in ledger.read(run_dir) if e["event"] == "submitted"]
        assert links.count(1) == 1, (delay, links)  # link 1 exists, once
        assert run_cli("cancel", name).returncode == 0
    print("killed launches left:", ", ".join(outcomes))


def test_a_run_directory_is_private(run_cli, runs_root):
    proc = run_cli("launch", "tiny", "--cluster", "local", "--name", "mine", "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr
    assert (runs_root / "mine").stat().st_mode & 0o777 == 0o700
    assert run_cli("cancel", "mine").returncode == 0


def test_a_launch_killed_while_qsub_hangs_leaves_a_run_that_resume_starts(sge_cluster, run_cli,
                                                                         runs_root, tmp_path):
    import subprocess
    import sys

    shim = tmp_path / "hanging"
    shim.mkdir()
    (shim / "qsub").write_text(f"#!/bin/bash\ntouch {shim}/called\nexec sleep 600\n")
    (shim / "qsub").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "slmjobs", "launch", "tiny", "--cluster", "sge",
                             "--name", "hung", "train.max_steps=4"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_until(lambda: (shim / "called").exists(), 60, "the launch to reach qsub")
    os.killpg(proc.pid, 9)  # the launcher and its hanging qsub
    proc.wait()
    run_dir = runs_root / "hung"
    assert rundir.is_run_dir(run_dir) and ledger.read(run_dir) == []
    (row,) = json.loads(run_cli("status", "hung", "--json").stdout)
    assert row["state"] == "new"
    assert "no link submitted yet; continue: slmjobs resume hung" in run_cli("status", "hung").stdout
    resumed = run_cli("resume", "hung")  # the real qsub again
    assert resumed.returncode == 0, resumed.stderr
    assert [e["link"] for e in ledger.read(run_dir) if e["event"] == "submitted"] == [1]
    assert run_cli("cancel", "hung").returncode == 0


# What can never train, refused at launch by the worker's own checks (issue: "a typo costs
# three queue waits"): one line naming the value and what is allowed, exit 2, nothing left.
NEVER_TRAINS = [
    (["data.path=does-not-exist"], {}, "data.path=does-not-exist: no prepared dataset"),
    (["train.max_stepz=120"], {}, "train.max_stepz: unknown key; did you mean train.max_steps?"),
    (["model.block_size=32"], {}, "windows of 64 tokens are longer than model.block_size=32"),
    (["--gpus", "2", "train.global_batch_size=7"], {},
     "train.global_batch_size=7: not divisible by the 2 ranks"),
    (["wandb.mode=online"], {"WANDB_API_KEY": "not-a-key"},
     "WANDB_API_KEY is not a wandb API key (9 characters"),
    (["wandb.mode=online"], {"WANDB_API_KEY": "", "NETRC": "/nonexistent"},
     "WANDB_API_KEY is not a wandb API key (0 characters"),
]


# (A dry run only warns about a dataset it cannot see: test_prepare_launch.py.)
@pytest.mark.parametrize("extra, env, message, dry_run", [
    pytest.param(extra, env, message, dry_run, id=f"{' '.join(extra)}-{'dry-run' if dry_run else 'launch'}")
    for extra, env, message in NEVER_TRAINS for dry_run in (False, True)
    if not (dry_run and extra[0].startswith("data.path="))])
def test_a_configuration_that_can_never_train_is_refused_at_launch(extra, env, message, dry_run,
                                                                   run_cli, qsub_spy, runs_root,
                                                                   tmp_path):
    gpus = [] if "--gpus" in extra else ["--gpus", "1"]
    args = ["launch", "tiny", "--cluster", "sge", "--name", "typo", *gpus, *extra]
    proc = run_cli(*args, *(["--dry-run"] if dry_run else []),
                   env={"PATH": qsub_spy["PATH"], **env})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("slmjobs: error: "), proc.stderr
    assert message in proc.stderr
    assert proc.stdout == "" and not qsub_spy["called"].exists()
    assert list(runs_root.iterdir()) == []
    if "WANDB_API_KEY" in env and env["WANDB_API_KEY"]:
        assert env["WANDB_API_KEY"] not in proc.stderr  # a secret is never echoed


def test_wandb_online_without_credentials_is_refused(run_cli, runs_root, tmp_path):
    env = {"NETRC": str(tmp_path / "no-netrc"), "HOME": str(tmp_path)}
    proc = run_cli("launch", "tiny", "--dry-run", "wandb.mode=online",
                   env={k: v for k, v in env.items()})
    assert proc.returncode == 2 and "wandb.mode=online but no wandb credentials" in proc.stderr
