"""The tiers tests/conftest.py assigns: `unit` leaves out everything that needs Grid Engine or
starts the training worker, and every collected test is in some tier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIERS = ('unit', 'cluster', 'e2e')
# modules whose every test needs the real scheduler or trains
NEVER_UNIT = ('tests/chain/test_chain_e2e.py', 'tests/chain/test_scheduler_faults.py',
              'tests/chain/test_bad_config_local.py', 'tests/backends/test_sge_real.py',
              'tests/trainer/test_resume.py', 'tests/trainer/test_two_ranks.py')
PLUGIN = '''
def pytest_collection_finish(session):
    for item in session.items:
        tiers = [m.name for m in item.iter_markers() if m.name in {tiers!r}]
        print('TIER', item.nodeid, ','.join(sorted(tiers)))
'''


def tiers_of_every_test(tmp_path) -> dict[str, set[str]]:
    (tmp_path / 'tier_dump.py').write_text(PLUGIN.format(tiers=TIERS))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    proc = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider',
                           '-p', 'tier_dump'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line[len('TIER '):].rsplit(' ', 1) for line in proc.stdout.splitlines() if line.startswith('TIER ')]
    return {nodeid: set(tiers.split(',')) - {''} for nodeid, tiers in rows}


def test_every_test_has_a_tier_and_the_unit_tier_has_no_scheduler_and_no_training(tmp_path):
    tiers = tiers_of_every_test(tmp_path)
    assert len(tiers) > 100
    assert not [t for t, found in tiers.items() if not found], 'tests in no tier'
    assert not [t for t, found in tiers.items() if 'unit' in found and len(found) > 1]
    unit = {t for t, found in tiers.items() if 'unit' in found}
    assert not [t for t in unit if t.startswith(NEVER_UNIT)]
    assert not [t for t in unit if 'real_launch' in t or t.startswith('tests/test_demo.py::test_demo_')]
    assert 'tests/trainer/test_validate.py::test_a_good_configuration_gives_the_plan' in unit
    chain = [found for t, found in tiers.items() if t.startswith('tests/chain/test_chain_e2e.py')]
    assert chain and all(found == {'cluster', 'e2e'} for found in chain)
