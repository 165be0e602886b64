"""A complete small scheduler for slmjobs (docs/EXTENDING.md): every job is a detached shell
on this machine, its state a few files in a directory. Name it in a profile as
`scheduler: shell_scheduler` (the module must import where slmjobs runs and where jobs run).

    <root>/<job id>/held      present while a user hold keeps the job from starting
    <root>/<job id>/hold_on   the job it waits for (a chain's successor), if any
    <root>/<job id>/pgid      written when it starts (its process group: what cancel kills)
    <root>/<job id>/ended     its exit status, written when it ends, however it ended
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from slmjobs.backends import ENDED, HELD, QUEUED, RUNNING, Backend, Job, directives

# One job: wait for the predecessor to end and for the user hold to go, then run the script.
RUNNER = """
while [ -n "$HOLD_ON" ] && [ ! -e "$ROOT/$HOLD_ON/ended" ]; do sleep 0.2; done
while [ -e "$JOB/held" ]; do sleep 0.2; done
[ -e "$JOB/ended" ] && exit 0                       # cancelled while it waited
echo $$ > "$JOB/pgid"
bash "$SCRIPT" > "$LOG" 2>&1
echo $? > "$JOB/ended"
"""


class ShellScheduler(Backend):
    kind = "shell"
    HEADER_TEMPLATE = "header-local.sh.j2"  # `#$` lines: comments to bash, read by submit
    JOB_ID_VARIABLE = "SHELL_JOB_ID"        # how a job learns its own id (the hooks ask)

    def __init__(self):
        self.root = Path(os.environ.get("SHELL_SCHEDULER_ROOT", "/tmp/shell-scheduler"))

    def submit(self, script: Path, hold_on: str | None = None, held: bool = False) -> str:
        job_id = str(time.time_ns())
        job = self.root / job_id
        job.mkdir(parents=True)
        if held:
            (job / "held").touch()
        if hold_on:
            (job / "hold_on").write_text(str(hold_on))
        log = next((words[1] for words in directives(Path(script).read_text())
                    if words[0] == "-o"), str(job / "log"))
        env = {**os.environ, "ROOT": str(self.root), "JOB": str(job), "HOLD_ON": hold_on or "",
               "SCRIPT": str(script), "LOG": log, self.JOB_ID_VARIABLE: job_id}
        subprocess.Popen(["bash", "-c", RUNNER], env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        return job_id

    def release(self, job_ids) -> None:
        for job_id in job_ids:
            (self.root / str(job_id) / "held").unlink(missing_ok=True)

    def query(self, job_ids) -> dict[str, Job]:
        return {str(j): self._job(self.root / str(j)) for j in job_ids}

    def accounting(self, job_id: str) -> Job | None:
        job = self._job(self.root / str(job_id))
        return job if job.state == ENDED else None

    def cancel(self, job_ids) -> None:
        for job_id in job_ids:
            job = self.root / str(job_id)
            if (job / "pgid").exists() and not (job / "ended").exists():
                subprocess.run(["kill", "-KILL", "--", f"-{(job / 'pgid').read_text().strip()}"])
            if not (job / "ended").exists():
                (job / "ended").write_text("137\n")

    def validate(self, script: Path) -> tuple[bool, str]:
        return True, f"shell: runs `bash {shlex.quote(str(script))}` here"

    def _job(self, job: Path) -> Job:
        if (job / "ended").exists():
            return Job(job_id=job.name, state=ENDED, exit_status=int((job / "ended").read_text()))
        if (job / "pgid").exists():
            return Job(job_id=job.name, state=RUNNING)
        if not job.exists():
            return Job(job_id=job.name, state=ENDED, reason="no such job")
        predecessor = (job / "hold_on").read_text() if (job / "hold_on").exists() else None
        waits = predecessor and not (self.root / predecessor / "ended").exists()
        held = (job / "held").exists() or waits
        return Job(job_id=job.name, state=HELD if held else QUEUED)


BACKEND = ShellScheduler
