"""docs/EXTENDING.md's examples run: the shell scheduler it names carries the counter kind it
names over several links (no scheduler package needed: it is a detached shell per job), and
every file the page links to exists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "EXTENDING.md"
EXAMPLES = REPO / "docs" / "examples"
KIND_DIR = REPO / "tests" / "chain"


def test_every_file_the_page_links_to_exists():
    for target in re.findall(r"\]\(([^)#]+)\)", DOC.read_text()):
        assert (DOC.parent / target).exists(), target


def test_the_shell_scheduler_carries_the_counter_kind_across_links(tmp_path, wait_until):
    # 20 s links, 8 s margin: a link counts at most 12, so 20 needs at least 2 links
    profile = tmp_path / "shell.yaml"
    profile.write_text(yaml.safe_dump({
        "scheduler": "shell_scheduler", "max_gpus": 1, "walltime_default": "00:00:20",
        "handoff_margin": 8, "runs_root": str(tmp_path / "runs"),
        "env": {"PYTHONPATH": f"{EXAMPLES}:{KIND_DIR}", "SHELL_SCHEDULER_ROOT": str(tmp_path / "jobs")},
        "chain": {"max_links": 10, "crash_budget": 1, "no_progress_links": 3}}))
    env = {"PYTHONPATH": f"{EXAMPLES}:{KIND_DIR}", "SHELL_SCHEDULER_ROOT": str(tmp_path / "jobs"),
           "PATH": "/usr/bin:/bin"}
    launch = ("from slmjobs.launch import Request, launch; import sys; "
              "print(launch(Request(kind='test_kind_plugin', options={'target': 20}, "
              "cluster=sys.argv[1], name='counted'))['run_dir'])")
    proc = subprocess.run([sys.executable, "-c", launch, str(profile)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.strip())

    def status():
        out = subprocess.run([sys.executable, "-m", "slmjobs", "status", str(run_dir), "--json"],
                             env=env, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out)[0]

    wait_until(lambda: status()["state"] == "finished", 300, "the counter to finish", interval=1.0)
    events = [json.loads(line) for line in (run_dir / "jobs.jsonl").read_text().splitlines()]
    ended = [e for e in events if e["event"] == "ended"]
    assert [e["how"] for e in ended if e["how"] != "cancelled"][-1] == "finished"
    assert len([e for e in ended if e["how"] == "handed_off"]) >= 1
    assert json.loads((run_dir / "count.json").read_text())["count"] == 20
    assert status()["count"] == 20
