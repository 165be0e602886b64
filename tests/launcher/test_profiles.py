"""Cluster profiles: shipped ones, validation errors that name file/key/allowed, user profiles."""

from __future__ import annotations

import pytest

from support import train_spec

from slmjobs import profiles
from slmjobs.backends.sge import pe_slots
from slmjobs.errors import UsageError


def test_shipped_profiles_load_and_resolve():
    assert {"local", "scc", "sge"} <= set(profiles.available())
    scc = profiles.load("scc")
    assert scc["scheduler"] == "sge" and scc["shell"] == "/bin/bash -l"
    assert scc["project_required"] is True
    assert scc["pe"] == "omp" and scc["pe_sizes"] == [1, 2, 3, 4, 8, 16, 28, 36]  # no 32: buy-in
    assert scc["walltime_default"] == "12:00:00"
    assert profiles.load("sge")["project_required"] is False
    assert profiles.load("local")["scheduler"] == "local"


@pytest.mark.parametrize("gpus, slots", [(1, 4), (2, 8), (3, 16), (4, 16)])
def test_cpus_per_gpu_round_up_to_allowed_pe_sizes(gpus, slots):
    assert pe_slots(profiles.load("scc"), gpus) == slots


def test_pe_size_beyond_the_site_list_is_refused():
    profile = {**profiles.load("scc"), "cpus_per_gpu": 20}
    with pytest.raises(UsageError, match="sizes up to 36"):
        pe_slots(profile, 2)


def test_default_profile_is_local_then_env_then_user_config(config_dir, monkeypatch):
    assert profiles.default_cluster() == "local"
    (config_dir / "config.yaml").write_text("cluster: sge\n")
    assert profiles.default_cluster() == "sge"
    monkeypatch.setenv("SLMJOBS_CLUSTER", "scc")
    assert profiles.default_cluster() == "scc"


def test_shipped_profiles_are_package_data():
    """The package reaches cluster/ through slmjobs/clusters, which a wheel build copies."""
    assert sorted(p.name for p in profiles.SHIPPED_DIR.glob("*.yaml")) == [
        "demo.yaml", "local.yaml", "scc.yaml", "sge.yaml", "slurm.yaml"]
    assert profiles.load("local")["scheduler"] == "local"


def test_user_profile_added_and_shadowing_a_shipped_one(config_dir):
    (config_dir / "clusters" / "mine.yaml").write_text("scheduler: sge\nmax_gpus: 2\n")
    (config_dir / "clusters" / "scc.yaml").write_text("scheduler: sge\nmax_gpus: 1\n")
    assert profiles.load("mine")["max_gpus"] == 2
    assert profiles.load("scc")["max_gpus"] == 1
    assert profiles.load("scc")["source"].startswith(str(config_dir))


def test_profile_by_path(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("scheduler: local\nmax_gpus: 3\n")
    loaded = profiles.load(str(path))
    assert loaded["name"] == "p" and loaded["max_gpus"] == 3


@pytest.mark.parametrize("text, key, allowed", [
    ("max_gpus: 2\n", "scheduler", "one of: sge, slurm, local"),              # missing key
    ("scheduler: pbs\nmax_gpus: 2\n", "scheduler", "one of: sge, slurm, local"),  # bad value
    ("scheduler: sge\nmax_gpu: 2\n", "max_gpu", "allowed keys are"),          # mistyped key
    ("scheduler: sge\nmax_gpus: four\n", "max_gpus", "a positive integer"),   # wrong type
    ("scheduler: sge\nmax_gpus: true\n", "max_gpus", "a positive integer"),   # bool is not int
    ("scheduler: sge\nmax_gpus: 2\nwalltime_max: 12h\n", "walltime_max", "HH:MM:SS"),
    ("scheduler: sge\nmax_gpus: 2\nwalltime_default: '50:00:00'\nwalltime_max: '48:00:00'\n",
     "walltime_default", "at most walltime_max"),
    ("scheduler: sge\nmax_gpus: 2\npe_sizes: [0, 4]\n", "pe_sizes", "positive integers"),
    ("scheduler: sge\nmax_gpus: 2\nchain: {max_link: 3}\n", "chain.max_link", "allowed keys"),
    ("scheduler: sge\nmax_gpus: 2\nproject: 'a b'\n", "project", "letters, digits"),
    ("scheduler: sge\nmax_gpus: 2\nhandoff_margin: soon\n", "handoff_margin", "seconds"),
])
def test_bad_profiles_name_file_key_and_allowed(tmp_path, text, key, allowed):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as error:
        profiles.load(str(path))
    message = str(error.value)
    assert str(path) in message and key in message and allowed in message
    assert "\n" not in message


def test_unknown_cluster_lists_the_allowed_ones():
    with pytest.raises(UsageError, match=r"unknown cluster 'nope': allowed are demo, local, scc, sge, slurm"):
        profiles.load("nope")


def test_not_yaml_is_a_usage_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("scheduler: [sge\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        profiles.load(str(path))


def test_runs_and_data_roots_expand_placeholders_and_env(monkeypatch):
    scc = profiles.load("scc")
    monkeypatch.delenv("SLMJOBS_RUNS_ROOT")
    assert str(profiles.runs_root(scc, "proj")) == "/projectnb/proj/tester/slmjobs/runs"
    assert str(profiles.data_root(scc, "proj")) == "/projectnb/proj/tester/slmjobs/data"
    monkeypatch.setenv("SLMJOBS_RUNS_ROOT", "/elsewhere")
    assert str(profiles.runs_root(scc, "proj")) == "/elsewhere"


def test_walltime_parsing():
    assert profiles.parse_walltime("12:00:00") == 43200
    assert profiles.parse_walltime("120:30:05") == 120 * 3600 + 30 * 60 + 5
    for bad in ("12:00", "1:2:3", "00:00:00", "12:60:00", "x", "-1:00:00"):
        with pytest.raises(UsageError):
            profiles.parse_walltime(bad)


def test_unquoted_walltimes_in_yaml_are_understood(tmp_path):
    """YAML 1.1 turns an unquoted 12:00:00 into the integer 43200 (base 60)."""
    path = tmp_path / "unquoted.yaml"
    path.write_text("scheduler: sge\nmax_gpus: 1\nwalltime_default: 12:00:00\nwalltime_max: 48:00:00\n")
    loaded = profiles.load(str(path))
    assert (loaded["walltime_default"], loaded["walltime_max"]) == ("12:00:00", "48:00:00")


def scc_copy_with(config_dir, old: str, new: str) -> None:
    """The shipped scc.yaml as the user's profile "mine", one line changed."""
    scc = (profiles.SHIPPED_DIR / "scc.yaml").read_text()
    assert old in scc
    (config_dir / "clusters" / "mine.yaml").write_text(scc.replace(old, new))


def test_scc_gpu_names_are_checked_case_sensitively_with_a_hint(config_dir):
    scc_copy_with(config_dir, "gpu_type: null", "gpu_type: a100")
    with pytest.raises(UsageError, match=r"'gpu_type' has bad value 'a100': allowed is one of "
                                         r"gpu_types: A100, .* \(names are case-sensitive: A100\)"):
        profiles.load("mine")


def test_scc_gpu_memory_must_be_one_of_bus_sizes(config_dir):
    scc_copy_with(config_dir, "default: 16G", "default: 15G")
    with pytest.raises(UsageError, match=r"gpu_memory.default' has bad value '15G': allowed is "
                                         r"one of gpu_memory_sizes: 12G, 16G, 24G, 32G, 48G, 80G"):
        profiles.load("mine")


def test_scc_walltime_maxima_for_gpu_and_cpu_only_jobs():
    scc = profiles.load("scc")
    assert profiles.walltime_max(scc, gpus=2) == "48:00:00"
    assert profiles.walltime_max(scc, gpus=0) == "720:00:00"
    assert profiles.walltime_max(profiles.load("sge"), gpus=0) == "720:00:00"  # no cpu key


def test_scc_loads_the_venvs_python_module_first(monkeypatch):
    from slmjobs import launch, render

    monkeypatch.setenv("SLMJOBS_PROJECT", "p")
    text = render.render_link(train_spec(cluster="scc", name="m"), 1)
    loads = [line for line in text.splitlines() if line.startswith("module load")]
    assert loads == ["module load python3/3.10.12", "module load cuda/12.2"]


def test_a_scheduler_key_on_a_local_profile_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("scheduler: local\nmax_gpus: 1\npe: omp\n")
    with pytest.raises(UsageError, match="unknown key 'pe' for scheduler 'local'"):
        profiles.load(str(path))
