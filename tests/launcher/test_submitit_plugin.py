"""The submitit plugin without a scheduler: how submitit finds it, what it refuses (with
submitit's own errors), what a submission that cannot launch leaves behind (nothing), and what the
`submitit` kind renders. The chains themselves: tests/chain/test_submitit.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
from submitit.core import plugins

from slmjobs import kinds, launch
from slmjobs.errors import UsageError
from slmjobs.submitit import SlmjobsExecutor, SlmjobsJobEnvironment


def test_the_entry_points_register_the_executor_and_its_job_environment():
    assert plugins.get_executors()["slmjobs"] is SlmjobsExecutor
    assert isinstance(plugins.get_job_environments()["slmjobs"], SlmjobsJobEnvironment)
    executor = submitit.AutoExecutor(Path("unused"), cluster="slmjobs")
    assert isinstance(executor._executor, SlmjobsExecutor)


def test_unknown_parameters_get_submitits_own_errors(tmp_path):
    executor = submitit.AutoExecutor(tmp_path, cluster="slmjobs")
    with pytest.raises(NameError, match="Unknown argument 'queue' for executor 'slmjobs'"):
        executor.update_parameters(slmjobs_queue="gpu")
    with pytest.raises(AssertionError, match='"timeout_min" expected type'):
        executor.update_parameters(timeout_min="60")
    with pytest.raises(ValueError, match=r"Unavailable parameter\(s\): \['queue'\]"):
        SlmjobsExecutor(tmp_path).update_parameters(queue="gpu")
    with pytest.raises(ValueError, match="nodes=2: allowed is 1"):
        executor.update_parameters(nodes=2)
    executor.update_parameters(timeout_min=90, gpus_per_node=2, cpus_per_task=4,
                               slmjobs_cluster="scc", slmjobs_project="mylab")
    assert executor._executor.parameters == {"timeout_min": 90, "gpus": 2, "cpus": 4,
                                             "cluster": "scc", "project": "mylab"}


def test_autoexecutor_without_a_name_never_picks_slmjobs_on_a_machine_without_a_scheduler(tmp_path):
    # Only the interpreter's own directory on PATH: no qsub, no sbatch.
    code = ("import submitit; e = submitit.AutoExecutor(sys.argv[1]); "
            "from submitit.core import plugins; assert 'slmjobs' in plugins.get_executors(); "
            "print(e.cluster)")
    proc = subprocess.run([sys.executable, "-c", f"import sys; {code}", str(tmp_path)],
                          env={**os.environ, "PATH": os.path.dirname(sys.executable)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "local"
    assert SlmjobsExecutor.affinity() == 0  # and with a scheduler: only when named


def test_a_submission_that_cannot_launch_leaves_nothing_behind(tmp_path):
    executor = submitit.AutoExecutor(tmp_path / "jobs", cluster="slmjobs")
    executor.update_parameters(timeout_min=1, slmjobs_cluster="no-such-profile")
    with pytest.raises(UsageError, match="no-such-profile"):
        executor.submit(print, "hello")
    assert [p for p in (tmp_path / "jobs").rglob("*") if p.is_file() or p.is_symlink()] == []
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_the_kind_renders_submitits_runner_under_the_wrapper_that_ignores_qdel_warnings(tmp_path):
    pickle = tmp_path / "x_submitted.pkl"
    pickle.write_bytes(b"")
    spec = launch.resolve(launch.Request(kind="submitit", cluster="local", name="count-1234", options={
        "folder": str(tmp_path), "job_id": "count-1234", "submitted_pickle": str(pickle),
        "result_pickle": str(tmp_path / "x_0_result.pkl")}))
    from slmjobs.render import render_link

    script = render_link(spec, 1)
    assert "--stop-signal HUP --ignore-warnings -- \"$SLMJOBS_PYTHON\" -u -m submitit.core._submit" \
        in script
    assert "export SUBMITIT_EXECUTOR=slmjobs" in script
    assert "export SUBMITIT_PREEMPT_SIGNAL=HUP" in script
    assert spec["gpus"] == 0 and kinds.of(spec).name == "submitit"


def test_the_kind_refuses_a_request_a_person_typed():
    with pytest.raises(UsageError, match="a submitit run needs folder"):
        kinds.by_name("submitit").spec_fields({}, {})


def test_status_and_the_hooks_load_the_kind_without_submitit():
    code = ("import sys; from slmjobs import kinds; kinds.by_name('submitit'); "
            "import slmjobs.cli, slmjobs.chain, slmjobs.monitor; "
            "print('submitit' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_the_wrapper_with_ignore_warnings_passes_no_scheduler_warning_on(tmp_path, wait_until):
    """A qdel with -notify sends SIGUSR2 to the job's group: the submitit kind's wrapper logs it
    and sends nothing (without --ignore-warnings it would send the stop signal: a hand-off)."""
    release, stopped, ready = tmp_path / "release", tmp_path / "stopped", tmp_path / "ready"
    child = ("import os, signal, sys, time\n"
             f"signal.signal(signal.SIGHUP, lambda *a: open({str(stopped)!r}, 'w').close())\n"
             f"open({str(ready)!r}, 'w').close()\n"
             f"while not os.path.exists({str(release)!r}): time.sleep(0.05)\n")
    log = tmp_path / "wrapper.log"
    with open(log, "w") as out:
        wrapper = subprocess.Popen([sys.executable, "-m", "slmjobs.wrapper", str(tmp_path / "run"),
                                    "--stop-signal", "HUP", "--ignore-warnings", "--",
                                    sys.executable, "-c", child],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(ready.exists, 30, "the command to start")
            wrapper.send_signal(subprocess.signal.SIGUSR2)
            wait_until(lambda: "ignoring SIGUSR2" in log.read_text(), 30, "the wrapper to log it")
            release.touch()
            assert wrapper.wait(timeout=30) == 0  # the command's own status: no hand-off
        finally:
            if wrapper.poll() is None:
                wrapper.kill()
    assert not stopped.exists()
    assert "sending SIGHUP" not in log.read_text()


def test_the_readme_shows_the_example_the_chain_tests_run():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    example = (root / "examples" / "submitit_count.py").read_text()
    shown = readme.split("class Count(submitit.helpers.Checkpointable):", 1)[1].split("\n\n\n")[0]
    body = example.split("class Count(submitit.helpers.Checkpointable):", 1)[1].split("\n\n\n")[0]
    assert shown.split("\nexecutor = ")[0].rstrip() == body.rstrip()  # the class, verbatim


def test_the_kind_reads_the_functions_outcome_without_unpickling_its_value(tmp_path):
    from submitit.core import utils

    from slmjobs.kinds.submitit import outcome

    class NotImportableWhereStatusRuns:
        pass

    for name, pair in (("ok", ("success", NotImportableWhereStatusRuns())), ("bad", ("error", "trace"))):
        utils.cloudpickle_dump(pair, tmp_path / f"{name}.pkl")
    assert outcome(str(tmp_path / "ok.pkl")) == "success"
    assert outcome(str(tmp_path / "bad.pkl")) == "error"
    assert outcome(str(tmp_path / "missing.pkl")) is None and outcome(None) is None
    (tmp_path / "empty.pkl").write_bytes(b"")
    assert outcome(str(tmp_path / "empty.pkl")) is None
