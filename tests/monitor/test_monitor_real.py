"""status / cancel / logs against the REAL Grid Engine (and the local backend for logs).

The job scripts here stand in for rendered link scripts: they write the ledger events the
chain hooks would write, with this interpreter, so no launcher or trainer is needed."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from slmjobs import chain, ledger, logs, monitor
from slmjobs.backends import ACTIVE_STATES
from support import make_run_dir

PY = sys.executable


def make_run(root: Path, name: str, scheduler: str) -> Path:
    return make_run_dir(root / name, scheduler, max_links=3)


def link_script(run_dir: Path, link: int, body: str) -> Path:
    """A link: records `started`, runs `body`, records `ended` (as the chain hooks would)."""
    record = (f"{PY} -c 'import sys; from slmjobs import ledger; ledger.append(sys.argv[1], "
              f"dict(event=sys.argv[2], link={link}, job_id=sys.argv[3], how=sys.argv[4], "
              f"exit_status=0))' {run_dir}")
    path = run_dir / f"link-{link:03d}.sh"
    path.write_text(f"""#!/bin/bash
#$ -N l2mon_{link}
#$ -o {run_dir}/logs/link-{link:03d}.log
#$ -j y
{record} started "$JOB_ID" -
echo "link {link} job $JOB_ID"
{body}
{record} ended "$JOB_ID" {"finished" if link == 2 else "handed_off"}
""")
    return path


def submit_link(backend, run_dir, link, hold_on=None):
    job_id = backend.submit(link_script(run_dir, link, "sleep 3"), hold_on=hold_on)
    ledger.append(run_dir, {"event": "submitted", "link": link, "job_id": job_id,
                            "hold_on": hold_on})
    return job_id


def test_status_follows_two_links_and_accounts_each_once(sge, tmp_path, wait_until):
    run = make_run(tmp_path, "two_links", "sge")
    first = submit_link(sge, run, 1)
    second = submit_link(sge, run, 2, hold_on=first)

    row = wait_until(lambda: (r := monitor.run_statuses([run])[0])["state"] == "running" and r,
                     20, "link 1 running")
    assert (row["link"], row["job_id"], row["max_links"]) == (1, first, 3)
    assert sge.query([second])[second].state == "held"

    row = wait_until(lambda: (r := monitor.run_statuses([run])[0])["link"] == 2
                     and r["state"] == "running" and r, 30, "link 2 running")
    assert row["previous_link"] == "handed off", (row, ledger.read(run))
    row = wait_until(lambda: (r := monitor.run_statuses([run])[0])["state"] == "finished"
                     and len([e for e in ledger.read(run) if e["event"] == "accounted"]) == 2
                     and r, 30, "both links accounted")
    monitor.run_statuses([run])
    accounted = [e for e in ledger.read(run) if e["event"] == "accounted"]
    assert sorted(e["job_id"] for e in accounted) == sorted([first, second])  # once each
    assert all(e["wallclock"] >= 3 for e in accounted)
    assert row["gpu_hours"] >= 6 / 3600


def test_a_job_gone_from_qstat_but_not_in_qacct_is_ending_never_finished(sge, tmp_path):
    """qacct lags qstat (up to the 1 s accounting flush). Poll status as fast as it answers
    while bare jobs end at staggered times: each must be `queued`/`running`, then `ending`
    while unaccounted, and a final state only once its accounting is recorded. The window is
    real but short (and a loaded machine slows the qstat+qacct pair that must fit in it), so
    rounds of six jobs ending 0.15 s apart run until status has landed in it."""
    seen_ending = 0
    for round_ in range(5):
        runs = []
        for n in range(6):
            run = make_run(tmp_path, f"ending{round_}-{n}", "sge")
            script = run / "bare.sh"
            script.write_text(f"#!/bin/bash\n#$ -N l2end\n#$ -o {run}/logs/link-001.log\n"
                              f"#$ -j y\nsleep {1 + 0.15 * n:.2f}\n")
            ledger.append(run, {"event": "submitted", "link": 1, "job_id": sge.submit(script)})
            runs.append(run)
        final: set[Path] = set()
        while len(final) < len(runs):
            for run, row in zip(runs, monitor.run_statuses(runs)):
                accounted = [e for e in ledger.read(run) if e["event"] == "accounted"]
                if row["state"] in ("queued", "running"):
                    assert not accounted
                elif row["state"] == "ending":
                    assert not accounted and row["job_state"] == "ending"
                    seen_ending += 1
                else:  # exit 0, no chain hooks, nothing queued: broken, once accounted
                    assert row["state"] == "broken" and len(accounted) == 1
                    assert accounted[0]["exit_status"] == 0
                    final.add(run)
        if seen_ending:
            break
    print(f"status saw a job ending {seen_ending} times in {round_ + 1} round(s)")
    assert seen_ending, "status never observed a job between qstat and qacct"


def test_cancel_run_leaves_nothing_queued_or_held(sge, tmp_path, wait_until):
    run = make_run(tmp_path, "cancel_me", "sge")
    first = sge.submit(link_script(run, 1, "sleep 60"))
    ledger.append(run, {"event": "submitted", "link": 1, "job_id": first})
    second = submit_link(sge, run, 2, hold_on=first)
    wait_until(lambda: monitor.run_statuses([run])[0]["state"] == "running", 20, "link 1 running")
    assert monitor.is_active(run)

    assert sorted(chain.cancel_run(run)) == sorted([first, second])
    events = ledger.read(run)
    kinds = [e["event"] for e in events]
    assert kinds.index("stopped") < len(kinds) - 2  # written before the jobs' `ended` events
    assert events[kinds.index("stopped")]["reason"] == "cancelled"
    wait_until(lambda: not monitor.is_active(run), 30, "the run's jobs to be gone")
    listing = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True).stdout
    assert not any(line.split()[0] in (first, second) for line in listing.splitlines()[2:])
    assert monitor.run_statuses([run])[0]["state"] == "cancelled"


def test_follow_logs_across_links_on_the_local_backend(local_backend, tmp_path):
    run = make_run(tmp_path, "local_logs", "local")
    first = local_backend.submit(link_script(run, 1, "sleep 1; echo end of 1"))
    ledger.append(run, {"event": "submitted", "link": 1, "job_id": first})
    second = local_backend.submit(link_script(run, 2, "echo end of 2"), hold_on=first)
    ledger.append(run, {"event": "submitted", "link": 2, "job_id": second})
    out = io.StringIO()
    assert logs.follow_logs(run, follow=True, poll_seconds=0.1, status_seconds=0.5,
                               out=out) == 0
    assert out.getvalue() == (f"link 1 job {first}\nend of 1\nlink 2 job {second}\nend of 2\n")
    row = monitor.run_statuses([run])[0]
    assert row["state"] == "finished" and row["previous_link"] == "handed off"
    assert all(job.state not in ACTIVE_STATES
               for job in local_backend.query([first, second]).values())


def test_status_says_so_and_fails_when_the_scheduler_cannot_be_asked(tmp_path):
    """A `qstat` first on PATH that fails as an unreachable qmaster does: the table still
    prints (state unknown), one line on stderr names the reason, the exit status is 1."""
    import os

    run = make_run(tmp_path, "unreachable", "sge")
    ledger.append(run, {"event": "submitted", "link": 1, "job_id": "4242", "hold_on": None})
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "qstat").write_text("#!/bin/bash\necho 'error: unable to contact qmaster using port"
                                " 6444 on host \"vm\"' >&2\nexit 1\n")
    (shim / "qstat").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}",
           "SLMJOBS_RUNS_ROOT": str(tmp_path)}
    proc = subprocess.run([PY, "-m", "slmjobs", "status"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "unreachable" in proc.stdout and "unknown" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "unable to contact qmaster" in proc.stderr
