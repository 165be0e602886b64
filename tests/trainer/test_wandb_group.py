"""A sweep's members are grouped in wandb: `wandb.group` reaches the wandb run as its group
(offline here), not only as a value of the logged configuration."""

from __future__ import annotations

GROUP = b'lrsweep-group'


def test_wandb_group_is_the_wandb_runs_group(worker):
    run = worker.run('grouped', 'wandb.enabled=true', f'wandb.group={GROUP.decode()}', max_steps=2)
    records = list((run.run_dir / 'wandb').glob('offline-run-*/run-*.wandb'))
    assert records, run.output()[-2000:]
    data = records[0].read_bytes()
    # The run record's group is a protobuf string: its length byte, then the text. The logged
    # configuration holds the same text as JSON ("group":"lrsweep-group"), which this is not;
    # without the group passed to wandb, only that JSON is there.
    assert bytes([len(GROUP)]) + GROUP in data
