"""scripts/sge-up.sh is idempotent: run again on the live cluster, it changes nothing that
matters and the cluster keeps working (scripts/test.sh runs it before every test session)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sge-up.sh"


def test_rerun_on_a_live_cluster_keeps_it_working(sge, tmp_path):
    rerun = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "already running" in rerun.stdout  # nothing restarted
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True,
                            timeout=60).stdout
    assert "sge_qmaster running" in status and "sge_execd   running" in status
    # the test cluster's resources survive the re-run: gpus=2 with -pe omp 2 is possible
    script = tmp_path / "after.sh"
    script.write_text("#!/bin/bash\n#$ -l gpus=2\n#$ -pe omp 2\ntrue\n")
    ok, message = sge.validate(script)
    assert ok, message
