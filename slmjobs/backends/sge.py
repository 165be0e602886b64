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

from slmjobs.backends.core import (ENDED, ENDING, HELD, QUEUED, RUNNING, SAFE_WORD, Backend,
                                   Job, SchedulerError, one_line, run_client)
from slmjobs.errors import UsageError

# What Grid Engine's clients print when the qmaster is busy, restarting or unreachable: the same
# request may go through a moment later. Anything else (a bad option, a denied project) won't.
TRANSIENT = re.compile(r"commlib error|unable to contact qmaster|failed receiving gdi request"
                       r"|connection refused|can't connect|unable to send message|timed? ?out"
                       r"|qmaster is not alive|not answer", re.I)


NEEDS = "the 'sge' scheduler needs Grid Engine's client commands (qsub, qstat, qacct, qdel)"


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return run_client(argv, check, NEEDS, TRANSIENT)


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
# qacct's `failed` codes in plain words (FINDINGS 3d-3g); the scheduler's own wording otherwise.
FAILED_IN_WORDS = {
    "37": "killed at its walltime limit (h_rt)",
    "100": "killed by a signal while running (qdel, or the kernel's OOM killer)",
    "25": "rescheduled (exit 99)",
    "26": "could not open its output file",
    "28": "could not change to its working directory",
}


def failed_in_words(code: str, text: str) -> str:
    return FAILED_IN_WORDS.get(code, text or f"failed {code}")


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
        reason=failed_in_words(failed_code, failed_text.strip())
        if failed_code not in ("", "0") else "",
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


# ---------------------------------------------------------------------- profile keys
_STR, _BOOL, _LIST = (str, type(None)), (bool,), (list, type(None))
PROFILE_KEYS = {
    "project": (_STR, None, "a project name (-P) or null"),
    "project_required": (_BOOL, False, "true or false"),
    "queue": (_STR, None, "a queue name (-q) or null"),
    "gpu_resource": (_STR, "gpus", "the consumable for -l NAME=N, or null for none"),
    "gpu_c": (_STR, None, "a minimum compute capability such as '7.0', or null"),
    "gpu_memory": ((str, dict, type(None)), None,
                   "a size such as 16G, a mapping model: size (with optional 'default'), or null"),
    "gpu_memory_sizes": (_LIST, None, "the sizes the site offers for gpu_memory, or null for any"),
    "gpu_type": (_STR, None, "a GPU type such as A6000, or null"),
    "gpu_types": (_LIST, None, "the site's GPU type names (case-sensitive), or null for any"),
    "cpus_per_gpu": ((int,), 1, "a positive integer"),
    "pe": (_STR, None, "a parallel environment name (-pe NAME N), or null"),
    "pe_sizes": (_LIST, None, "a list of allowed slot counts, or null for any"),
    "notify": (_BOOL, False, "true or false (-notify)"),
    "extra_directives": ((list,), [], "a list of extra qsub option strings, e.g. '-l mem_per_core=8G'"),
}


def _check_profile(p: dict, fail) -> None:
    if p["cpus_per_gpu"] < 1:
        raise fail("cpus_per_gpu", p["cpus_per_gpu"], "a positive integer")
    for key in ("pe_sizes",):
        if p[key] is not None:
            if not p[key] or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                     for n in p[key]):
                raise fail(key, p[key], "a non-empty list of positive integers")
            p[key] = sorted(p[key])
    for key in ("gpu_memory_sizes", "gpu_types"):
        if p[key] is not None and not all(isinstance(v, str) and SAFE_WORD.match(v) for v in p[key]):
            raise fail(key, p[key], "a list of names (letters, digits and _.,:=+@%/~-)")
    if not all(isinstance(item, str) and "\n" not in item for item in p["extra_directives"]):
        raise fail("extra_directives", p["extra_directives"], "a list of one-line strings")
    sizes = p["gpu_memory"] if isinstance(p["gpu_memory"], dict) else {"": p["gpu_memory"]}
    for model, size in sizes.items():
        key = f"gpu_memory.{model}" if model else "gpu_memory"
        if size is not None and not isinstance(size, str):
            raise fail(key, size, "a size such as 16G")
        if size is not None and p["gpu_memory_sizes"] is not None \
                and size not in p["gpu_memory_sizes"]:
            raise fail(key, size, "one of gpu_memory_sizes: " + ", ".join(p["gpu_memory_sizes"]))
    if p["gpu_type"] is not None and p["gpu_types"] is not None \
            and p["gpu_type"] not in p["gpu_types"]:
        near = [t for t in p["gpu_types"] if t.lower() == p["gpu_type"].lower()]
        hint = f" (names are case-sensitive: {near[0]})" if near else ""
        raise fail("gpu_type", p["gpu_type"],
                   "one of gpu_types: " + ", ".join(p["gpu_types"]) + hint)
    for key in ("project", "queue", "gpu_resource", "gpu_c", "gpu_type", "pe"):
        if p[key] is not None and not SAFE_WORD.match(p[key]):
            raise fail(key, p[key], "letters, digits and _.,:=+@%/~- only")


def pe_slots(profile: dict, gpus: int, cpus: int | None = None) -> int | None:
    """CPUs for `-pe NAME N`: `cpus` when the request names them (a CPU-only job), else
    cpus_per_gpu x gpus; rounded up to the next size the site allows."""
    if not profile["pe"]:
        return None
    wanted = cpus if cpus is not None else profile["cpus_per_gpu"] * max(gpus, 1)
    sizes = profile["pe_sizes"]
    if sizes is None:
        return wanted
    for size in sizes:
        if size >= wanted:
            return size
    asked = f"--cpus {cpus}" if cpus is not None else f"{gpus} GPUs need {wanted} CPUs but"
    raise UsageError(f"{asked}: {profile['source']} allows -pe {profile['pe']} sizes up to "
                     f"{sizes[-1]}: allowed is {', '.join(map(str, sizes))}" if cpus is not None else
                     f"{asked} {profile['source']} allows -pe {profile['pe']} sizes up to "
                     f"{sizes[-1]}: use fewer GPUs")


def gpu_memory(profile: dict, model: str) -> str | None:
    value = profile["gpu_memory"]
    if isinstance(value, dict):
        return value.get(model, value.get("default"))
    return value


# ---------------------------------------------------------------------- backend
class SGEBackend(Backend):
    kind = "sge"
    HEADER_TEMPLATE = "header-sge.sh.j2"
    JOB_ID_VARIABLE = "JOB_ID"
    SLOTS_VARIABLE = "NSLOTS"
    USES_PROJECT = True
    PROFILE_KEYS = PROFILE_KEYS

    def check_available(self, profile: dict) -> None:
        if shutil.which("qsub") is None:
            raise UsageError(f"qsub not found on PATH: cluster {profile['name']!r} needs Grid "
                             "Engine's client commands; allowed is a profile with scheduler: "
                             "local (--cluster local)")

    def check_profile(self, profile: dict, fail) -> None:
        _check_profile(profile, fail)

    def check_request(self, profile: dict, spec: dict) -> None:
        pe_slots(profile, spec["gpus"], spec.get("cpus"))  # raises when no allowed size fits

    def header_context(self, profile: dict, spec: dict) -> dict:
        return {
            "project": spec.get("project"), "queue": profile["queue"],
            "pe": profile["pe"], "pe_slots": pe_slots(profile, spec["gpus"], spec.get("cpus")),
            "notify": profile["notify"], "extra_directives": profile["extra_directives"],
            # A CPU-only job (data preparation) asks for no GPU at all.
            **({"gpu_resource": profile["gpu_resource"], "gpu_c": profile["gpu_c"],
                "gpu_memory": gpu_memory(profile, spec.get("model")),
                "gpu_type": profile["gpu_type"]} if spec["gpus"] > 0 else
               {"gpu_resource": None, "gpu_c": None, "gpu_memory": None, "gpu_type": None}),
        }

    def submit(self, script: Path, hold_on: str | None = None, held: bool = False) -> str:
        argv = ["qsub", "-terse"]
        if hold_on:
            argv += ["-hold_jid", str(hold_on)]
        if held:
            argv.append("-h")  # a user hold, which qrls lifts
        out = _run(argv + [str(script)]).stdout.strip()
        job_id = out.splitlines()[-1].split(".")[0] if out else ""
        if not job_id.isdigit():
            raise SchedulerError(f"qsub -terse printed {out!r}, not a job id")
        return job_id

    def release(self, job_ids, after: str | None = None) -> None:
        ids = [str(j) for j in job_ids]
        if not ids:
            return
        if after:  # the hold on `after` first: released alone they could start before it ends
            _run(["qalter", "-hold_jid", str(after)] + ids)
        _run(["qrls", "-h", "u"] + ids)

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
            raise SchedulerError(f"qdel {' '.join(ids)} failed: {one_line(' / '.join(problems))}")

    def validate(self, script: Path) -> tuple[bool, str]:
        """`qsub -w v`: checks the request against an empty cluster and submits nothing
        (it does use up a job number)."""
        proc = _run(["qsub", "-w", "v", str(script)], check=False)
        return proc.returncode == 0, one_line(proc.stdout + "\n" + proc.stderr)
