"""Parsing of Grid Engine output (samples captured from the real 8.1.9 cluster in data/) and the
SGE backend's error paths, with stand-in commands on PATH. The real path: test_sge_real.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmjobs.backends import (ENDED, ENDING, HELD, QUEUED, RUNNING, SchedulerError,
                              directives, get_backend, parse_duration, resource_requests)
from slmjobs.backends.sge import SGEBackend, normalize_state, parse_qacct, parse_qstat_xml
from slmjobs.errors import UsageError

DATA = Path(__file__).parent / "data"


def test_qstat_xml_every_state_in_one_listing():
    jobs = parse_qstat_xml((DATA / "qstat_mixed.xml").read_text())
    states = {job_id: job.state for job_id, job in jobs.items()}
    assert states == {
        "782": RUNNING, "783": RUNNING,  # r
        "784": RUNNING,                  # array: tasks 1,2 r and 3,4 qw -> as far as its furthest task
        "790": RUNNING,                  # dr: qdel with -notify, still running until execd kills it
        "785": QUEUED, "786": QUEUED,    # qw (-a: not before a start time)
        "787": HELD,                     # Eqw: never runs by itself
        "788": HELD, "789": HELD,        # hqw (-h, -hold_jid)
    }
    assert jobs["787"].reason.startswith("error state Eqw")
    assert jobs["790"].reason == "being deleted"
    assert jobs["785"].slots == 2 and jobs["785"].name == "samp_pe"
    assert jobs["783"].start_time is not None and jobs["785"].start_time is None


def test_empty_listing_and_garbage():
    empty = ("<?xml version='1.0'?><job_info><queue_info></queue_info>"
             "<job_info></job_info></job_info>")
    assert parse_qstat_xml(empty) == {}
    with pytest.raises(SchedulerError, match="unreadable qstat"):
        parse_qstat_xml("error: commlib error: got select error")


@pytest.mark.parametrize("code,state", [
    ("qw", QUEUED), ("hqw", HELD), ("hRwq", HELD), ("Eqw", HELD), ("r", RUNNING),
    ("t", RUNNING), ("Rr", RUNNING), ("Rt", RUNNING), ("dr", RUNNING), ("hr", RUNNING),
    ("s", RUNNING), ("S", RUNNING), ("Rq", QUEUED), ("dt", RUNNING),
])
def test_state_letters(code, state):
    assert normalize_state(code)[0] == state


def test_qacct_killed_at_h_rt():
    job = parse_qacct((DATA / "qacct_hrt.txt").read_text())
    assert (job.state, job.exit_status, job.failed) == (ENDED, 137, True)
    assert "h_rt" in job.reason
    assert job.wallclock == 3.0 and job.slots == 1
    assert job.start_time and job.end_time and job.end_time >= job.start_time


def test_qacct_requeued_job_has_two_records_the_last_one_counts():
    job = parse_qacct((DATA / "qacct_requeued.txt").read_text())
    assert (job.exit_status, job.failed, job.reason) == (0, False, "")
    assert job.gpus == 2  # from `category -l gpus=2`


def test_qacct_nothing_readable():
    assert parse_qacct("") is None
    assert parse_qacct("error: job id 9 not found\n") is None


def test_directives_and_requests():
    script = "#!/bin/bash\n#$ -N run_a\n#$ -l h_rt=01:02:03,gpus=2 -j y\n#$ -o 'a b.log'\necho '#$ -N no'\n"
    assert directives(script) == [["-N", "run_a"], ["-l", "h_rt=01:02:03,gpus=2", "-j", "y"],
                                  ["-o", "a b.log"]]
    assert resource_requests(script) == {"h_rt": "01:02:03", "gpus": "2"}
    assert parse_duration("01:02:03") == 3723 and parse_duration("90") == 90
    assert parse_duration("2:00") == 120
    with pytest.raises(UsageError, match="'1h'"):
        parse_duration("1h")


def test_unknown_backend_kind():
    with pytest.raises(UsageError, match="'pbs'.*sge, slurm, local"):
        get_backend("pbs")


# ------------------------------------------------------------ error paths (stand-ins)
def _stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:/usr/bin:/bin")
    return directory


def test_no_qsub_on_path_is_a_usage_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/bash\n")
    backend = SGEBackend()
    with pytest.raises(UsageError, match="qsub not found on PATH"):
        backend.submit(script)
    with pytest.raises(UsageError, match="qstat not found"):
        backend.query(["1"])
    assert backend.query([]) == {}  # nothing asked, nothing needed


def test_qsub_refusal_is_a_scheduler_error_with_its_message(fake_bin, tmp_path):
    _stand_in(fake_bin, "qsub", 'echo "Unable to run job: unknown resource \\"foo\\"" >&2; exit 1')
    with pytest.raises(SchedulerError, match='unknown resource "foo"'):
        SGEBackend().submit(tmp_path / "s.sh")


def test_qsub_printing_no_job_id(fake_bin, tmp_path):
    _stand_in(fake_bin, "qsub", 'echo "Your job 4 has been submitted"')
    with pytest.raises(SchedulerError, match="not a job id"):
        SGEBackend().submit(tmp_path / "s.sh")


def test_terse_array_id_and_hold_argument(fake_bin, tmp_path):
    _stand_in(fake_bin, "qsub", f'echo "$@" > {tmp_path}/args; echo 5.1-3:1')
    assert SGEBackend().submit(tmp_path / "s.sh", hold_on="4") == "5"
    assert (tmp_path / "args").read_text().split() == ["-terse", "-hold_jid", "4",
                                                       str(tmp_path / "s.sh")]


def test_qmaster_down(fake_bin):
    _stand_in(fake_bin, "qstat", 'echo "error: unable to contact qmaster using port 6444 on host \\"vm\\"" >&2; exit 1')
    with pytest.raises(SchedulerError, match="unable to contact qmaster"):
        SGEBackend().query(["1", "2"])


def test_query_marks_jobs_missing_from_qstat_as_ending(fake_bin):
    _stand_in(fake_bin, "qstat", f"cat {DATA / 'qstat_mixed.xml'}")
    jobs = SGEBackend().query(["783", "789", "424242"])
    assert [jobs[j].state for j in ("783", "789", "424242")] == [RUNNING, HELD, ENDING]


def test_qacct_unknown_job_is_none(fake_bin):
    _stand_in(fake_bin, "qacct", 'echo "error: job id $2 not found" >&2; exit 1')
    assert SGEBackend().accounting("12") is None


def test_qdel_ignores_jobs_already_gone_but_not_other_failures(fake_bin):
    _stand_in(fake_bin, "qdel", 'echo "denied: job \\"$1\\" does not exist" >&2; exit 1')
    SGEBackend().cancel(["424242"])
    _stand_in(fake_bin, "qdel", 'echo "error: unable to contact qmaster" >&2; exit 1')
    with pytest.raises(SchedulerError, match="unable to contact qmaster"):
        SGEBackend().cancel(["1"])


def test_qacct_deleted_while_running():
    job = parse_qacct((DATA / "qacct_qdel.txt").read_text())
    assert (job.exit_status, job.failed) == (137, True)
    assert job.reason == "killed by a signal while running (qdel, or the kernel's OOM killer)"
