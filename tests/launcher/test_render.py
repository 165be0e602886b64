"""Rendering: golden scripts for every shipped profile x {tiny, gpt2} x {1, 2} GPUs, the SCC
script's required lines, quoting discipline in the templates, user template overrides.

Regenerate the goldens after an intended template change with
    SLMJOBS_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/launcher/test_render.py
and review the diff.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support import train_spec

from slmjobs import launch, render
from slmjobs.errors import UsageError

GOLDEN = Path(__file__).parent / "golden"
TEMPLATES = Path(render.__file__).parent / "templates"
FIXED_PYTHON = "/opt/venv/bin/python"
FIXED_WORKDIR = "/home/tester/project"


def golden_spec(cluster, model, gpus, monkeypatch, overrides=("train.max_duration=1000ba",)):
    """A run spec with everything machine-specific pinned (runs root, python, cwd, user, home)."""
    monkeypatch.setenv("SLMJOBS_RUNS_ROOT", "/runs")
    monkeypatch.setenv("HOME", "/home/tester")
    monkeypatch.chdir(Path("/"))  # local's ./data resolves against the cwd
    return train_spec(model, gpus=gpus, cluster=cluster, name=f"golden-{model}-{gpus}",
                          project="myproj" if cluster == "scc" else None, overrides=list(overrides),
                          python=FIXED_PYTHON, workdir=FIXED_WORKDIR)


@pytest.mark.parametrize("cluster", ["scc", "sge", "slurm", "local"])
@pytest.mark.parametrize("model", ["tiny", "gpt2"])
@pytest.mark.parametrize("gpus", [1, 2])
def test_golden_scripts(cluster, model, gpus, monkeypatch):
    text = render.render_link(golden_spec(cluster, model, gpus, monkeypatch), 1)
    path = GOLDEN / f"{cluster}-{model}-{gpus}gpu.sh"
    if os.environ.get("SLMJOBS_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path.name}: run with SLMJOBS_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} changed; regenerate if intended"
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_scc_gpt2_two_gpus_carries_the_original_script_and_more(monkeypatch):
    text = render.render_link(golden_spec("scc", "gpt2", 2, monkeypatch), 1)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash -l"
    for directive in ("-pe omp 8", "-l gpus=2", "-l gpu_c=7.0", "-l gpu_memory=16G", "-j y",
                      "-P myproj", "-l h_rt=12:00:00", "-N golden-gpt2-2",
                      "-o /runs/golden-gpt2-2/logs/link-001.log", f"-wd {FIXED_WORKDIR}"):
        assert f"#$ {directive}" in lines, directive
    assert not [line for line in lines if line.startswith(("#$ -m", "#$ -M"))]  # one mail per run
    assert "export TOKENIZERS_PARALLELISM=false" in lines
    assert "module load python3/3.10.12" in lines
    # the worker: composer on 2 ranks, the contract's overrides first, then the user's
    worker = re.search(r"^composer (.*?)&$", text, re.S | re.M).group(1)
    assert worker.split() == ["-n", "2", "-m", "trainer.train", "\\", "model=gpt2", "\\",
                              "run_name=golden-gpt2-2", "\\", "run_dir=/runs/golden-gpt2-2", "\\",
                              "train.max_duration=1000ba", "\\"]
    # deadline = start + h_rt - margin, exported with the other contract variables
    assert "WALLTIME_SECONDS=43200" in lines and "HANDOFF_MARGIN=600" in lines
    assert "export SLMJOBS_DEADLINE=$(( SLMJOBS_JOB_START + WALLTIME_SECONDS - HANDOFF_MARGIN ))" in lines
    for name in ("SLMJOBS_JOB_START", "SLMJOBS_LINK", "SLMJOBS_DATA_ROOT", "SLMJOBS_SHM_FILE"):
        assert re.search(rf"^export {name}=", text, re.M), name
    # signals ignored before the worker starts, worker in the background and waited for
    assert lines.index("trap '' USR1 USR2 TERM") < lines.index("worker=$!")
    assert 'wait "$worker"' in lines
    # chain hooks exactly as CONTRACTS.md
    assert '"$SLMJOBS_PYTHON" -m slmjobs.chain begin "$RUN_DIR" "$SLMJOBS_LINK"' in lines
    assert '"$SLMJOBS_PYTHON" -m slmjobs.chain end "$RUN_DIR" "$SLMJOBS_LINK" "$status"' in lines
    # never exit 99/100 by itself
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert not re.search(r"exit (99|100)\b", code)


def test_later_links_get_their_own_log_and_number(monkeypatch):
    text = render.render_link(golden_spec("sge", "tiny", 1, monkeypatch), 12)
    assert "#$ -o /runs/golden-tiny-1/logs/link-012.log" in text
    assert "export SLMJOBS_LINK=12" in text


def test_every_template_value_goes_through_a_marking_filter():
    """No bare {{ value }}: shell lines use shquote, #$ lines directive, profile shell lines trusted."""
    allowed = {"shquote", "directive", "directive_words", "trusted"}
    for path in TEMPLATES.glob("*.j2"):
        for expression in re.findall(r"{{(.*?)}}", path.read_text(), re.S):
            filters = {f.strip().split("(")[0] for f in expression.split("|")[1:]}
            assert filters & allowed, f"{path.name}: unmarked value {{{{{expression}}}}}"


def test_no_template_value_sits_inside_double_quotes():
    """shquote's single quotes mean nothing inside "...": $(...) would run there."""
    for path in TEMPLATES.glob("*.j2"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in re.finditer(r"{{", line):
                before = re.sub(r"'[^']*'", "", line[:match.start()])  # drop '...' spans
                assert before.count('"') % 2 == 0, f"{path.name}:{number}: value inside \"...\""


def test_a_value_that_needs_quoting_never_reaches_a_directive(monkeypatch):
    spec = golden_spec("sge", "tiny", 1, monkeypatch)
    spec["workdir"] = "/home/tester/my project"
    with pytest.raises(UsageError, match="cannot go into a '#\\$' job directive"):
        render.render_link(spec, 1)


def test_user_template_extends_the_builtin_one(config_dir, tmp_path, monkeypatch):
    (config_dir / "templates" / "custom.sh.j2").write_text(
        '{% extends "builtin/base.sh.j2" %}\n'
        "{% block environment %}\necho custom environment\n{{ super() }}{% endblock %}\n")
    profile = tmp_path / "withtemplate.yaml"
    profile.write_text("scheduler: sge\nmax_gpus: 2\ntemplate: custom.sh.j2\n")
    text = render.render_link(golden_spec(str(profile), "tiny", 1, monkeypatch), 1)
    assert "echo custom environment" in text
    assert "export TOKENIZERS_PARALLELISM=false" in text  # super() kept the rest
    assert "#$ -l gpus=1" in text


def test_successors_render_with_the_template_dir_of_the_launch(config_dir, tmp_path, monkeypatch):
    """Inside a job SLMJOBS_CONFIG_DIR is unset: the run spec remembers where templates were."""
    (config_dir / "templates" / "custom.sh.j2").write_text(
        '{% extends "builtin/base.sh.j2" %}{% block environment %}echo mine\n{% endblock %}')
    profile = tmp_path / "withtemplate.yaml"
    profile.write_text("scheduler: local\nmax_gpus: 1\ntemplate: custom.sh.j2\n")
    spec = golden_spec(str(profile), "tiny", 1, monkeypatch)
    monkeypatch.setenv("SLMJOBS_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert "echo mine" in render.render_link(spec, 2)


def test_user_header_overrides_the_shipped_one(config_dir, monkeypatch):
    (config_dir / "templates" / "header-local.sh.j2").write_text(
        "#$ -N {{ job_name | directive }}\n#$ -l h_rt={{ walltime | directive }}\n#$ -q mine\n")
    text = render.render_link(golden_spec("local", "tiny", 1, monkeypatch), 1)
    assert "#$ -q mine" in text.splitlines()


def test_missing_template_and_unknown_value_are_usage_errors(config_dir, tmp_path, monkeypatch):
    spec = golden_spec("local", "tiny", 1, monkeypatch)
    spec["cluster"]["template"] = "nope.sh.j2"
    with pytest.raises(UsageError, match="'nope.sh.j2' not found"):
        render.render_link(spec, 1)
    (config_dir / "templates" / "strict.sh.j2").write_text("echo {{ no_such_value | shquote }}\n")
    spec["cluster"]["template"] = "strict.sh.j2"
    with pytest.raises(UsageError, match="no_such_value"):
        render.render_link(spec, 1)


def test_composer_resolves_in_the_job(tmp_path, monkeypatch):
    """The job's PATH gets the launcher's bin dir, or the dir where composer is found."""
    from slmjobs import launch

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "composer").write_text("#!/bin/sh\n")
    (venv / "composer").chmod(0o755)
    assert launch.worker_bin_dir(str(venv / "python"), "composer") == str(venv)
    user_bin = tmp_path / "local-bin"
    user_bin.mkdir()
    (user_bin / "composer").write_text("#!/bin/sh\n")
    (user_bin / "composer").chmod(0o755)
    monkeypatch.setenv("PATH", str(user_bin))
    assert launch.worker_bin_dir("/usr/bin/python3", "composer") == str(user_bin)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(UsageError, match="composer not found"):
        launch.worker_bin_dir("/usr/bin/python3", "composer")
