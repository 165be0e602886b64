"""The worker's configuration checks, run by the launcher in its own process: what a dry run
imports (never the training stack, nor hydra), and relative paths taken from the run's working
directory without the launcher changing its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from slmjobs.errors import UsageError
from slmjobs.kinds.train import check_training_config
from support import train_spec

NEVER_IMPORTED = ("torch", "composer", "streaming", "lightning", "submitit", "lm_eval", "hydra")


def test_a_dry_run_checks_the_configuration_without_the_training_stack_or_hydra(data_root, runs_root):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "slmjobs", "launch", "gpt2",
                           "--gpus", "2", "--cluster", "scc", "--project", "p", "--dry-run",
                           "train.betas=[0.9,0.99]", "wandb.project='a b'", "++wandb.entity=team",
                           "data.path=${oc.env:SLMJOBS_DATA_ROOT}/builtin"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("#!/bin/bash")
    # -X importtime: "import time: self [us] | cumulative | imported package", one line per module
    modules = {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.+)$",
                                                       proc.stderr, re.M)}
    assert {"trainer.validate", "trainer.compose", "omegaconf"} <= modules  # the checks ran here
    packages = {name.split(".")[0] for name in modules}
    assert not packages & set(NEVER_IMPORTED), f"imported: {sorted(packages & set(NEVER_IMPORTED))}"


def test_relative_paths_are_the_runs_workdir_s_and_the_launcher_stays_where_it_is(
        prepared_data_root, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "data").mkdir(parents=True)
    (work / "data" / "builtin").symlink_to(prepared_data_root / "builtin")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def spec(*overrides):
        request = train_spec(workdir=str(work), overrides=overrides)
        return {**request, "data_root": None}  # a profile without data_root: ./data of the job

    assert check_training_config(spec())["data"]["path"] == "builtin"
    with pytest.raises(UsageError, match=f"no prepared dataset \\(shards\\) at {work}/data/nope;"):
        check_training_config(spec("data.path=nope"))
    assert os.getcwd() == str(elsewhere)
