"""From raw corpus to training without a login node, on the real Grid Engine and the local
backend, through the real CLI: `slmjobs prepare ... --submit` chains CPU-only links across
1-minute (Grid Engine) or 30-second (local) walltimes, its dataset byte-identical to the same
preparation in the foreground; `slmjobs launch ... --after PREP` trains on it once it finished.
A preparation SIGKILLed mid-piece by h_rt continues in the next link to the same bytes; one that
stops (a corrupt input file) leaves its waiting training run visible as waiting on a stopped
run, nothing queued, and after `slmjobs resume` (file fixed) the training starts by itself.

The chains sleep more than they compute (`--debug-piece-sleep`, in the middle of writing every
piece), so the module fixture launches them all at once and each test waits for its own. Every
count of links follows from the walltime and the sleep, never from the machine's speed: a link
records at most (walltime - margin) / sleep pieces before its deadline.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chain_support import cluster_profile, local_profile
from slmjobs import ledger
from support import corpus_jsonl, dataset_files, wait_until

LIMITS = {"max_links": 20, "crash_budget": 2, "no_progress_links": 3}
# Grid Engine: 1-minute links, 20 s margin, 8 s pieces: at most 5 pieces a link before its deadline.
SGE_WALLTIME, SGE_MARGIN, SGE_SLEEP = 60, 20, 8
# local: 30 s links, 10 s margin, 4 s pieces: at most 5 pieces a link.
LOCAL_WALLTIME, LOCAL_MARGIN, LOCAL_SLEEP = 30, 10, 4
DOCUMENTS = 45
PREPARATION = ["--max-documents", str(DOCUMENTS), "--seq-len", "64", "--piece-chars", "8000"]
# A small GPT on the 64-token windows: what matters is that it trains on the prepared data to the end.
MAX_STEPS = 20
TRAINING = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
            f"train.max_steps={MAX_STEPS}", "train.global_batch_size=4", "train.eval_every=0",
            "train.eval_batches=2", "train.log_every=10", "checkpoint.save_every_batches=10",
            "checkpoint.keep=2", "data.num_workers=0", "wandb.enabled=false"]
WAIT = 1200  # seconds a chain may take on a busy 2-core machine


class Chains:
    """Preparations and trainings launched and watched through the real CLI, in one root."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "SLMJOBS_RUNS_ROOT": str(root / "runs"),
                    "SLMJOBS_LOCAL_STATE": str(root / "local-state"),
                    "SLMJOBS_CACHE_DIR": str(root / "cache"),
                    "SLMJOBS_CONFIG_DIR": str(root / "config"), "OMP_NUM_THREADS": "1"}
        for name in ("SLMJOBS_DEADLINE", "SLMJOBS_LINK", "SLMJOBS_JOB_START", "SLMJOBS_CLUSTER",
                     "SLMJOBS_DATA_ROOT", "SLMJOBS_CPUS"):
            self.env.pop(name, None)
        self.names: list[str] = []

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "slmjobs", *args], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=300)

    def profile(self, name: str, data: dict) -> str:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    def prepare(self, name: str, profile: str, source: str, out: Path, sleep: float, *extra) -> Path:
        proc = self.cli("prepare", "--submit", "--cluster", profile, "--name", name, *extra,
                        "--source", source, *PREPARATION, "--out", str(out),
                        "--debug-piece-sleep", str(sleep))
        assert proc.returncode == 0, proc.stderr
        self.names.append(name)
        return self.root / "runs" / name

    def train_after(self, name: str, profile: str, prep: str, data: Path) -> Path:
        proc = self.cli("launch", "tiny", "--cluster", profile, "--name", name, "--after", prep,
                        f"data.path={data}", *TRAINING)
        assert proc.returncode == 0, proc.stderr
        assert f"waiting for run {prep} to finish" in proc.stdout
        self.names.append(name)
        return self.root / "runs" / name

    def status(self, name: str) -> dict:
        (row,) = json.loads(self.cli("status", name, "--json").stdout)
        return row

    def wait_over(self, name: str) -> list[dict]:
        """Until the run is over and nothing of it is queued or running (status also concludes
        a run whose last link was killed before its hook)."""
        def over():
            row = self.status(name)
            return row["state"] in ("finished", "stopped", "failed", "cancelled") \
                and row["job_state"] not in ("queued", "held", "running")
        wait_until(over, WAIT, f"{name} to be over", interval=3.0)
        return ledger.read(self.root / "runs" / name)

    def close(self):
        for name in self.names:
            self.cli("cancel", name)


def foreground(root: Path, source: str, out: Path) -> Path:
    """The same preparation, in the foreground, as the README's path before jobs."""
    proc = subprocess.run([sys.executable, "-m", "slmjobs", "prepare", "--source", source, *PREPARATION,
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return out


def pieces_of(dataset: Path) -> int:
    """Pieces of text (the journal's count less the final padded window's)."""
    return json.loads((dataset / "dataset.json").read_text())["pieces"] - 1


@pytest.fixture(scope="module")
def chains(tmp_path_factory, sge_cluster):
    root = tmp_path_factory.mktemp("prepare-chains")
    c = Chains(root)
    data = root / "data"
    corpus = corpus_jsonl(root / "corpus.jsonl", documents=DOCUMENTS)
    sge = c.profile("sge", {**cluster_profile("sge", "00:01:00", SGE_MARGIN, LIMITS), "max_gpus": 1})
    # A deadline far away, as a site whose h_rt is shorter than the job was told: h_rt kills.
    sge_killing = c.profile("sge-kill", {**cluster_profile("sge", "00:01:00", SGE_MARGIN, LIMITS, env={
        "SLMJOBS_DEADLINE": "4102444800"}), "max_gpus": 1})
    local = c.profile("local", local_profile(f"00:00:{LOCAL_WALLTIME:02d}", LOCAL_MARGIN, LIMITS))
    training_sge = c.profile("train-sge", cluster_profile("sge", "00:10:00", 60, LIMITS))
    training_local = c.profile("train-local", local_profile("00:10:00", 60, LIMITS))
    c.prep_sge = c.prepare("prep-sge", sge, "builtin", data / "sge", SGE_SLEEP, "--cpus", "1")
    c.train_sge = c.train_after("train-sge", training_sge, "prep-sge", data / "sge")
    c.prep_kill = c.prepare("prep-kill", sge_killing, "builtin", data / "kill", SGE_SLEEP, "--cpus", "1")
    c.prep_local = c.prepare("prep-local", local, str(corpus), data / "local", LOCAL_SLEEP)
    c.train_local = c.train_after("train-local", training_local, "prep-local", data / "local")
    # a corrupt line after 20 good documents: the preparation stops with it (exit 2)
    c.corrupt = root / "corrupt.jsonl"
    good = corpus.read_text().splitlines(keepends=True)
    c.corrupt.write_text("".join(good[:20]) + "{not json\n" + "".join(good[20:]))
    c.prep_corrupt = c.prepare("prep-corrupt", local, str(c.corrupt), data / "corrupt", 1)
    c.orphan = c.train_after("train-orphan", training_local, "prep-corrupt", data / "corrupt")
    c.builtin = foreground(root, "builtin", root / "reference" / "builtin")
    c.jsonl = foreground(root, str(corpus), root / "reference" / "jsonl")
    c.data = data
    yield c
    c.close()


def assert_trained_after(chains: Chains, train: Path, prep: Path, data: Path) -> None:
    """The waiting run's first link was submitted only once the preparation had finished, and it
    trained on that dataset to its last step."""
    prep_finished = [e["time"] for e in ledger.read(prep) if e.get("reason") == "finished"]
    evs = chains.wait_over(train.name)
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"], evs[-3:]
    submitted = [e for e in evs if e["event"] == "submitted"]
    assert evs[0]["event"] == "waiting" and submitted[0]["time"] >= prep_finished[0] > evs[0]["time"]
    assert json.loads((train / "tokenizer" / "dataset.json").read_text()) == \
        json.loads((data / "dataset.json").read_text())
    progress = json.loads((train / "progress.json").read_text())
    assert progress["state"] == "finished" and progress["step"] == MAX_STEPS


def test_a_preparation_chains_over_three_links_on_grid_engine_to_the_foreground_bytes(chains):
    script = (chains.prep_sge / "scripts" / "link-001.sh").read_text().splitlines()
    assert "#$ -pe omp 1" in script and not [s for s in script if s.startswith("#$ -l gpus")]
    evs = chains.wait_over("prep-sge")
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]
    per_link = (SGE_WALLTIME - SGE_MARGIN) // SGE_SLEEP
    assert math.ceil(pieces_of(chains.builtin) / per_link) >= 3  # the setting asks for 3 links
    started = [e for e in evs if e["event"] == "started"]
    assert len(started) >= math.ceil(pieces_of(chains.builtin) / per_link)
    handed = [e for e in evs if e["event"] == "ended" and e["how"] == "handed_off"]
    assert len(handed) >= 2 and [e["progress"] for e in handed] == sorted({e["progress"] for e in handed})
    assert dataset_files(chains.data / "sge") == dataset_files(chains.builtin)
    table = chains.cli("status", "prep-sge").stdout.splitlines()
    assert ["DOCS", "TOKENS", "TOK/S"] == [t for t in table[0].split() if t in ("DOCS", "TOKENS", "TOK/S")]
    assert f"{DOCUMENTS}/{DOCUMENTS}" in table[1]
    assert "handed off after piece" in chains.cli("logs", "prep-sge").stdout


def test_a_training_run_waiting_for_it_on_grid_engine_starts_once_it_finished(chains):
    chains.wait_over("prep-sge")
    assert_trained_after(chains, chains.train_sge, chains.prep_sge, chains.data / "sge")


def test_a_preparation_killed_mid_piece_by_h_rt_continues_to_the_same_bytes(chains):
    evs = chains.wait_over("prep-kill")
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]
    killed = [e for e in evs if e["event"] == "ended" and e["how"] == "killed"]
    assert killed, [e for e in evs if e["event"] == "ended"]
    accounted = [e for e in evs if e["event"] == "accounted" and e.get("failed")]
    assert accounted  # Grid Engine's own verdict: killed at h_rt
    assert dataset_files(chains.data / "kill") == dataset_files(chains.builtin)


def test_a_preparation_chains_on_the_local_backend_and_training_follows(chains):
    evs = chains.wait_over("prep-local")
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]
    per_link = (LOCAL_WALLTIME - LOCAL_MARGIN) // LOCAL_SLEEP
    assert math.ceil(pieces_of(chains.jsonl) / per_link) >= 3
    assert len([e for e in evs if e["event"] == "started"]) >= math.ceil(pieces_of(chains.jsonl) / per_link)
    assert dataset_files(chains.data / "local") == dataset_files(chains.jsonl)
    assert_trained_after(chains, chains.train_local, chains.prep_local, chains.data / "local")


def test_a_stopped_preparation_leaves_its_training_waiting_visibly_and_resume_starts_both(chains):
    evs = chains.wait_over("prep-corrupt")
    (stop,) = [e for e in evs if e["event"] == "stopped"]
    assert stop["reason"] == "bad_config" and "line 21 is not JSON" in stop["detail"]
    row = chains.status("train-orphan")
    assert row["state"] == "waiting" and row["job_id"] is None
    note = chains.cli("status", "train-orphan").stdout
    assert ("waiting for prep-corrupt, which stopped (bad_config); "
            "continue it: slmjobs resume prep-corrupt") in note
    assert chains.status("prep-corrupt")["job_state"] not in ("queued", "held", "running")
    refused = chains.cli("resume", "train-orphan")
    assert refused.returncode == 2 and "waits for run prep-corrupt" in refused.stderr

    chains.corrupt.write_text("".join(line for line in chains.corrupt.read_text().splitlines(keepends=True)
                                      if line != "{not json\n"))
    resumed = chains.cli("resume", "prep-corrupt")
    assert resumed.returncode == 0, resumed.stderr
    evs = chains.wait_over("prep-corrupt")
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["bad_config", "finished"]
    assert shards(chains.data / "corrupt") == shards(chains.jsonl)  # the same documents, another file
    assert_trained_after(chains, chains.orphan, chains.prep_corrupt, chains.data / "corrupt")


def shards(dataset: Path) -> dict:
    """The MDS shards and indexes alone (dataset.json and the journal also name the source file)."""
    return {name: data for name, data in dataset_files(dataset).items()
            if name.startswith(("train/", "val/"))}
