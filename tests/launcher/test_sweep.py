"""Sweeps (slmjobs/sweep.py): hydra's own grammar expanded into members, their names, the whole
sweep refused for one bad member, the dry run, and the throttle's decisions.

The throttle's decisions are tested here with the real launcher, ledgers, hooks' `over.conclude`
and status against support.fake_scheduler in place of the local scheduler (what a scheduler does
with a hold is tested on the real ones in tests/backends); tests/chain/test_sweep_e2e.py runs a
sweep of real chains on the real Grid Engine.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from slmjobs import backends, events, ledger, monitor, over, sweep, throttle
from slmjobs.errors import UsageError
from support import fake_scheduler

SMALL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64",
         "wandb.enabled=false"]


# ------------------------------------------------------------------ the grammar, the names
def test_hydras_sweep_grammar_expands_to_the_cartesian_product_in_hydras_order():
    members, swept = sweep.expand(["train.lr=3e-4,6e-4", "seed=range(2)", "train.max_steps=10"])
    assert swept == ["train.lr", "seed"]
    # the values as hydra parsed them: what the worker's hydra sees too
    assert members == [["train.lr=0.0003", "seed=0", "train.max_steps=10"],
                       ["train.lr=0.0003", "seed=1", "train.max_steps=10"],
                       ["train.lr=0.0006", "seed=0", "train.max_steps=10"],
                       ["train.lr=0.0006", "seed=1", "train.max_steps=10"]]
    members, _ = sweep.expand(["model.n_head=choice(2,4)"])
    assert members == [["model.n_head=2"], ["model.n_head=4"]]


@pytest.mark.parametrize("grammar, said", [
    (["train.lr=interval(0.1,1)"], "does not support sweep type"),  # a grid has no intervals
    (["train.lr=[1,2"], "allowed is hydra's sweep grammar"),
])
def test_what_hydra_cannot_expand_is_refused_in_one_line(grammar, said):
    with pytest.raises(UsageError) as caught:
        sweep.expand(grammar)
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_member_names_say_their_values_in_the_run_name_charset_and_are_unique():
    members, swept = sweep.expand(["train.lr=3e-4,6e-4", "seed=range(2)"])
    assert sweep.member_names("lrs", members, swept) == [
        "lrs-lr0.0003-seed0", "lrs-lr0.0003-seed1", "lrs-lr0.0006-seed0", "lrs-lr0.0006-seed1"]
    # values that read the same once made a run name: the second gets its member number
    members, swept = sweep.expand(["data.path='a b','a:b'"])
    assert sweep.member_names("s", members, swept) == ["s-patha_b", "s-patha_b-2"]
    long = ["x" * 150, "x" * 151]
    names = sweep.member_names("s", [[f"data.path={v}"] for v in long], ["data.path"])
    assert [len(n) for n in names] == [100, 100] and names[0] != names[1]
    assert sweep.member_names("s", [["seed=1"]], ["seed"], taken=["s-seed1"]) == ["s-seed1-1"]


# ------------------------------------------------------------------ the command
def test_dry_run_prints_every_member_and_the_first_script_and_leaves_nothing(run_cli, runs_root,
                                                                           data_root):
    proc = run_cli("sweep", "tiny", "--name", "lrs", "--max-running", "2", "--dry-run",
                   *SMALL, "train.lr=3e-4,6e-4", "seed=range(2)")
    assert proc.returncode == 0, proc.stderr
    members = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("member ")]
    assert members == ["lrs-lr0.0003-seed0:", "lrs-lr0.0003-seed1:", "lrs-lr0.0006-seed0:",
                       "lrs-lr0.0006-seed1:"]
    assert "# link 1 of lrs-lr0.0003-seed0:" in proc.stdout
    assert "train.lr=0.0003 seed=0" in proc.stdout and "wandb.group=lrs" in proc.stdout
    assert "#!/bin/bash" in proc.stdout
    assert list(runs_root.iterdir()) == []


def test_one_bad_member_refuses_the_whole_sweep_in_one_line_and_leaves_nothing(run_cli, runs_root,
                                                                              data_root):
    proc = run_cli("sweep", "tiny", "--name", "heads", *SMALL, "model.n_head=2,3")
    assert proc.returncode == 2, proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("slmjobs: error: sweep heads: member heads-n_head3: model.n_embd=32: "
                           "must be divisible by model.n_head=3"), line
    assert list(runs_root.iterdir()) == []


@pytest.mark.parametrize("args, said", [
    (["--name", "1st", "seed=1,2"], "bad run name '1st'"),
    (["--name", "s", "--max-running", "0", "seed=1,2"], "--max-running 0: allowed is 1 or more"),
    (["--name", "s", "seed=interval(1,2)"], "does not support sweep type"),
])
def test_bad_sweep_options_exit_2_with_nothing_left(run_cli, runs_root, data_root, args, said):
    proc = run_cli("sweep", "tiny", *SMALL, *args)
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert list(runs_root.iterdir()) == []


def test_a_taken_sweep_name_is_refused(run_cli, runs_root, data_root):
    (runs_root / throttle.SWEEPS_DIR / "s").mkdir(parents=True)
    proc = run_cli("sweep", "tiny", "--name", "s", *SMALL, "seed=1,2")
    assert proc.returncode == 2 and "sweep name 's' is taken" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the throttle
@pytest.fixture
def sched(monkeypatch):
    fake = fake_scheduler()
    monkeypatch.setitem(backends.REGISTRY, "local", lambda: fake)
    monkeypatch.delenv("JOB_ID", raising=False)  # not inside a job: nothing to release after
    return fake


def start(name: str, members: int, k: int) -> tuple[Path, list[Path]]:
    result = sweep.start(name, "tiny", [*SMALL, f"seed=range({members})"], k, {})
    return result["sweep_dir"], [Path(s["run_dir"]) for s in result["specs"]]


def first_job(run_dir: Path) -> str:
    return events.of_kind(ledger.read(run_dir), "submitted")[-1]["job_id"]


def test_past_k_members_wait_held_and_each_member_over_releases_the_next_once(sched, data_root):
    path, dirs = start("thr", members=4, k=2)
    jobs = [first_job(d) for d in dirs]
    assert sched.user_held == set(jobs[2:])
    record = sweep.load(path)
    assert record["max_running"] == 2 and record["grammar"] == [[*SMALL, "seed=range(4)"]]
    assert [m["overrides"] for m in record["members"]] == [[f"seed={i}"] for i in range(4)]
    rows = {r["name"]: r for r in monitor.run_statuses(dirs)}
    assert rows["thr-seed3"]["state"] == "waiting" and rows["thr-seed3"]["waiting_for_slot"]
    from slmjobs.table import note
    assert note(rows["thr-seed3"]) == "waiting for a sweep slot (sweep thr)"

    sched.states[jobs[0]] = "running"
    over.conclude(dirs[0], events.CANCELLED, "slmjobs cancel")  # over however it ended
    assert sched.released == [(jobs[2], None)]
    over.conclude(dirs[0], events.CANCELLED, "slmjobs cancel")  # the action is claimed once
    assert sched.released == [(jobs[2], None)]
    released = events.of_kind(ledger.read(dirs[2]), "released")
    assert [(e["job_id"], e["by"]) for e in released] == [(jobs[2], "thr-seed0")]
    assert monitor.run_statuses([dirs[2]])[0]["state"] != "waiting"


def test_status_tells_a_member_waiting_for_a_slot_from_a_link_held_behind_its_predecessor(
        sched, data_root):
    from slmjobs import submit
    from slmjobs.table import note

    path, dirs = start("held", members=2, k=1)
    first = first_job(dirs[0])
    sched.states[first] = "running"
    successor = submit.submit_link(dirs[0], 2, hold_on=first)
    rows = {r["name"]: r for r in monitor.run_statuses(dirs)}
    assert note(rows["held-seed1"]) == "waiting for a sweep slot (sweep held)"
    sched.states[first] = "ended"  # link 1 gone: the successor is the current link
    sched.accounted[first] = backends.Job(job_id=first, state="ended", exit_status=75)
    row = monitor.run_statuses(dirs[:1])[0]
    assert (row["state"], note(row)) == ("held", f"held behind its predecessor (job {first})")
    assert row["job_id"] == successor


def test_two_members_over_at_once_release_two_different_members(sched, data_root):
    path, dirs = start("race", members=4, k=2)
    jobs = [first_job(d) for d in dirs]
    for job in jobs[:2]:
        sched.states[job] = "running"
    threads = [threading.Thread(target=over.conclude, args=(d, events.FINISHED, "done"))
               for d in dirs[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(j for j, _ in sched.released) == sorted(jobs[2:])


def test_status_releases_for_a_member_killed_before_its_hook(sched, data_root):
    path, dirs = start("kill", members=3, k=1)
    jobs = [first_job(d) for d in dirs]
    sched.states[jobs[0]] = "running"
    assert monitor.run_statuses(dirs) and sched.released == []  # the one slot is held
    sched.states[jobs[0]] = "ended"  # qdel'd, no `end` hook: nobody released anyone
    sched.accounted[jobs[0]] = backends.Job(job_id=jobs[0], state="ended", exit_status=137,
                                            failed=True)
    rows = monitor.run_statuses(dirs)
    assert sched.released == [(jobs[1], None)]
    assert [e["by"] for e in events.of_kind(ledger.read(dirs[1]), "released")] == ["status"]
    assert [r["waiting_for_slot"] for r in rows] == [False, False, True]
    assert monitor.run_statuses(dirs) and len(sched.released) == 1  # K = 1 is held again


def test_status_of_some_members_only_never_releases(sched, data_root):
    """Status of one member knows nothing of the others' jobs: it must not fill their slots."""
    path, dirs = start("part", members=2, k=1)
    sched.states[first_job(dirs[0])] = "ended"
    monitor.run_statuses(dirs[1:])
    assert sched.released == []


def test_table_reads_each_members_metrics_history(sched, data_root):
    path, dirs = start("tab", members=2, k=2)
    for i, run_dir in enumerate(dirs):
        records = [{"event": "start", "link": 1, "step": 0, "tokens": 0},
                   {"event": "train", "link": 1, "step": 10, "tokens": 40, "loss": 3.0 - i},
                   {"event": "train", "link": 1, "step": 20, "tokens": 80, "loss": 3.5 - i}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = sweep.table_rows(sweep.load(path), monitor.run_statuses(dirs), "loss")
    assert [(r["name"], r["overrides"], r["final_loss"], r["best_loss"], r["tokens"])
            for r in rows] == [("tab-seed1", "seed=1", 2.5, 2.0, 80),
                               ("tab-seed0", "seed=0", 3.5, 3.0, 80)]


def test_add_puts_more_members_under_the_same_throttle(sched, data_root):
    path, dirs = start("more", members=1, k=1)
    result = sweep.add(path, ["seed=5,6"])
    names = [s["name"] for s in result["specs"]]
    assert names == ["more-seed5", "more-seed6"] and result["released"] == []
    assert sched.user_held == {first_job(Path(s["run_dir"])) for s in result["specs"]}
    assert [m["name"] for m in sweep.load(path)["members"]] == ["more-seed0", *names]
