"""The tiers tests/conftest.py assigns, checked over every test this session collected (in a
plain `pytest` or `pytest -m unit` run: all of them, before `-m` deselects any): each test is in
a tier, and `unit` holds nothing that needs Grid Engine or starts the training worker."""

from __future__ import annotations

from pathlib import Path

from support import COLLECTED_TIERS, SCHEDULER_LANES

# modules whose every test needs the real scheduler or trains
NEVER_UNIT = ('tests/chain/test_chain_e2e.py', 'tests/chain/test_scheduler_faults.py',
              'tests/chain/test_bad_config_local.py', 'tests/backends/test_sge_real.py',
              'tests/backends/test_slurm_real.py',
              'tests/trainer/test_resume.py', 'tests/trainer/test_two_ranks.py',
              'tests/trainer/test_history.py', 'tests/chain/test_damaged_checkpoint_local.py',
              'tests/chain/test_diverged_local.py', 'tests/chain/test_submitit.py',
              'tests/chain/test_run_command_chain.py')


def test_every_test_has_a_tier_and_the_unit_tier_has_no_scheduler_and_no_training(request):
    tiers = request.config.stash[COLLECTED_TIERS]
    assert request.node.nodeid in tiers and tiers[request.node.nodeid] == ['unit']
    assert not [t for t, found in tiers.items() if not found], 'tests in no tier'
    assert not [t for t, found in tiers.items() if 'unit' in found and len(found) > 1]
    unit = {t for t, found in tiers.items() if 'unit' in found}
    assert not [t for t in unit if t.startswith(NEVER_UNIT)]
    assert not [t for t in unit if 'real_launch' in t or t.startswith('tests/test_demo.py::test_demo_')]
    chain = [found for t, found in tiers.items() if t.startswith('tests/chain/test_chain_e2e.py')]
    assert all(set(found) == {'cluster', 'e2e'} for found in chain)


def test_every_module_that_uses_a_real_scheduler_runs_in_a_scheduler_lane(request):
    """A module that submits to Grid Engine or SLURM but is missing from SCHEDULER_LANES would
    run beside the others and compete for the test clusters' GPUs."""
    tiers = request.config.stash[COLLECTED_TIERS]
    using = {t.split('::')[0] for t, found in tiers.items() if 'cluster' in found}
    assert not using - set(SCHEDULER_LANES), 'add these to support.SCHEDULER_LANES'
    root = Path(__file__).parents[1]
    assert all((root / module).is_file() for module in SCHEDULER_LANES)
