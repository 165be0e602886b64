"""Two ranks through the `composer` launcher on gloo (CPU): a signal hand-off that both ranks
agree on, exit statuses 75 and 0 through the launcher, and an exact resume.

The launcher returns the first non-zero rank status in rank order and SIGTERMs the other ranks
as soon as one exits non-zero; the worker makes both ranks leave together with the same status
and ignores late signals while exiting (trainer.handoff.ignore_signals_for_exit)."""

from __future__ import annotations

import signal

from support import assert_bitwise_equal, checkpoint_step, model_weights

STEPS = 12


def test_two_ranks_hand_off_on_a_signal_and_resume_bitwise(worker):
    reference = worker.run('ref2', ranks=2, max_steps=STEPS)
    assert reference.steps() == list(range(1, STEPS + 1))

    first = worker.start('two', 'train.debug_batch_sleep=0.3', ranks=2, max_steps=STEPS)
    first.wait_for_step(3)
    first.signal_group(signal.SIGUSR1)  # launcher and bash ignore it; both ranks receive it
    assert first.wait() == 75, first.output()[-4000:]
    trained = first.steps()
    assert trained[-1] < STEPS
    assert checkpoint_step(first.run_dir) == trained[-1]

    second = worker.run('two', run_dir=first.run_dir, ranks=2, max_steps=STEPS)
    assert trained + second.steps() == list(range(1, STEPS + 1))
    assert_bitwise_equal(model_weights(first.run_dir), model_weights(reference.run_dir))
