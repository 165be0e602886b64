"""Grid Engine (tested on Son of Grid Engine 8.1.9): qsub, ONE `qstat -xml` for all jobs, qacct, qdel.

Measured behaviour this relies on (reference/sge/FINDINGS.md): `qsub -terse` prints the job id
(`ID.first-last:step` for arrays); running jobs are in `<queue_info>`, pending ones in
`<job_info>`; a job leaves qstat about 1 s after it ends and reaches `qacct` about 0.4 s later
(flush_time), so "not in qstat and not in qacct" means ENDING, never finished or lost;
`qacct -j N` for an unknown job exits 1; `qdel` of an unknown job exits 1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from slmjobs.backends.core import (ENDED, ENDING, HELD, QUEUED, RUNNING, Backend, Job,
                                   SchedulerError)
from slmjobs.errors import UsageError

COMMAND_TIMEOUT = 60  # seconds; a qmaster that does not answer in a minute is down


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise UsageError(
            f"{argv[0]} not found on PATH: the 'sge' scheduler needs Grid Engine's client "
            "commands (qsub, qstat, qacct, qdel); use a cluster profile with scheduler: local")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{' '.join(argv)} did not answer within {COMMAND_TIMEOUT} s") from None
    if check and proc.returncode != 0:
        raise SchedulerError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                             f"{_one_line(proc.stderr or proc.stdout)}")
    return proc


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())


# ------------------------------------------------------------------- qstat -xml
def normalize_state(code: str) -> tuple[str, str]:
    """SGE state letters -> (normalized state, reason). E before h before d: an error state
    never runs on its own; a deleted pending job is gone at once, a deleted running one is
    still running until killed."""
    if "E" in code:
        return HELD, f"error state {code} (see qstat -j)"
    if "r" in code or "t" in code or ("q" not in code and any(c in code for c in "sST")):
        reason = ""
        if "d" in code:
            reason = "being deleted"
        elif "s" in code or "S" in code or "T" in code:
            reason = f"suspended ({code})"
        return RUNNING, reason
    if "h" in code:
        return HELD, "hold (waiting on a predecessor or a user hold)"
    if "q" in code or "w" in code:
        return QUEUED, ""
    if "d" in code:
        return RUNNING, "being deleted"
    return QUEUED, f"unrecognised state {code!r}"


def _iso_to_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()  # qstat prints local time
    except ValueError:
        return None


def parse_qstat_xml(xml_text: str) -> dict[str, Job]:
    """`qstat -u '*' -xml` -> {job id: Job} for every job it lists (array tasks fold into one)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise SchedulerError(f"unreadable qstat -xml output: {exc}") from None
    jobs: dict[str, Job] = {}
    for element in root.iter("job_list"):
        job_id = (element.findtext("JB_job_number") or "").strip()
        if not job_id:
            continue
        state, reason = normalize_state((element.findtext("state") or "").strip())
        slots = element.findtext("slots")
        job = Job(job_id=job_id, state=state, reason=reason,
                  name=(element.findtext("JB_name") or "").strip(),
                  slots=int(slots) if slots and slots.strip().isdigit() else None,
                  start_time=_iso_to_epoch(element.findtext("JAT_start_time")))
        previous = jobs.get(job_id)
        if previous is None or _rank(job.state) > _rank(previous.state):
            jobs[job_id] = job  # an array job is as far along as its most advanced task
    return jobs


def _rank(state: str) -> int:
    return {HELD: 0, QUEUED: 1, RUNNING: 2}.get(state, -1)


# ---------------------------------------------------------------------- qacct -j
def parse_qacct(text: str) -> Job | None:
    """`qacct -j ID` -> Job(state=ENDED) from its records (a job re-run after exit 99, or an
    array, has several: the last one says how it ended, wallclock is summed)."""
    records = [r for r in re.split(r"^=+\s*$", text, flags=re.M) if r.strip()]
    parsed = [dict(_qacct_fields(r)) for r in records]
    parsed = [r for r in parsed if "jobnumber" in r]
    if not parsed:
        return None
    last = parsed[-1]
    failed_code, _, failed_text = last.get("failed", "0").partition(":")
    failed_code = failed_code.strip()
    exit_status = _int(last.get("exit_status", "").split()[0] if last.get("exit_status") else None)
    gpus = re.search(r"gpus=(\d+)", last.get("category", ""))
    return Job(
        job_id=last["jobnumber"], state=ENDED, name=last.get("jobname", ""),
        exit_status=exit_status,
        failed=failed_code not in ("", "0"),  # the scheduler's verdict; the script's is exit_status
        reason=failed_text.strip() if failed_code not in ("", "0") else "",
        wallclock=sum(_seconds(r.get("ru_wallclock")) for r in parsed),
        slots=_int(last.get("slots")),
        gpus=int(gpus.group(1)) if gpus else None,
        start_time=_qacct_time(parsed[0].get("start_time")),
        end_time=_qacct_time(last.get("end_time")),
    )


def _qacct_fields(record: str):
    for line in record.splitlines():
        key, _, value = line.partition(" ")
        if key:
            yield key, value.strip()


def _int(text) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _seconds(text: str | None) -> float:
    """ru_wallclock is `16s` on 8.1.9, a bare number on older versions."""
    if not text:
        return 0.0
    try:
        return float(text.strip().rstrip("s"))
    except ValueError:
        return 0.0


def _qacct_time(text: str | None) -> float | None:
    if not text or text.startswith("-/-"):
        return None
    try:
        return datetime.strptime(text.strip(), "%a %b %d %H:%M:%S %Y").timestamp()
    except ValueError:
        return None


# ---------------------------------------------------------------------- backend
class SGEBackend(Backend):
    kind = "sge"

    def submit(self, script: Path, hold_on: str | None = None) -> str:
        argv = ["qsub", "-terse"]
        if hold_on:
            argv += ["-hold_jid", str(hold_on)]
        out = _run(argv + [str(script)]).stdout.strip()
        job_id = out.splitlines()[-1].split(".")[0] if out else ""
        if not job_id.isdigit():
            raise SchedulerError(f"qsub -terse printed {out!r}, not a job id")
        return job_id

    def query(self, job_ids) -> dict[str, Job]:
        """ONE `qstat -u '*' -xml` call. A job that is not listed has left the queue: ENDING
        (ask `accounting()` whether it is accounted yet)."""
        wanted = [str(j) for j in job_ids]
        if not wanted:
            return {}
        listed = parse_qstat_xml(_run(["qstat", "-u", "*", "-xml"]).stdout)
        return {j: listed.get(j) or Job(job_id=j, state=ENDING) for j in wanted}

    def accounting(self, job_id: str) -> Job | None:
        proc = _run(["qacct", "-j", str(job_id)], check=False)
        if proc.returncode != 0:
            return None  # not accounted yet, or no accounting file yet (first job of a cluster)
        return parse_qacct(proc.stdout)

    def cancel(self, job_ids) -> None:
        ids = [str(j) for j in job_ids]
        if not ids:
            return
        proc = _run(["qdel"] + ids, check=False)
        problems = [line for line in (proc.stderr + proc.stdout).splitlines()
                    if line.strip() and "does not exist" not in line
                    and "for deletion" not in line and "has deleted" not in line]
        if proc.returncode != 0 and problems:
            raise SchedulerError(f"qdel {' '.join(ids)} failed: {_one_line(' / '.join(problems))}")

    def validate(self, script: Path) -> tuple[bool, str]:
        """`qsub -w v`: checks the request against an empty cluster and submits nothing
        (it does use up a job number)."""
        proc = _run(["qsub", "-w", "v", str(script)], check=False)
        return proc.returncode == 0, _one_line(proc.stdout + "\n" + proc.stderr)
