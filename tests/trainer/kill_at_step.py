"""Run trainer.train, but SIGKILL the process at the end of batch $KILL_AT_STEP, once every
callback of the worker has seen that batch (it is trained and logged) and before any checkpoint
of it is written: a hard kill at a chosen batch. Test-only fault injection."""

import os
import runpy
import signal
import sys

from composer import Trainer
from composer.core import Callback

STEP = int(os.environ['KILL_AT_STEP'])


class KillAtStep(Callback):

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == STEP:
            print(f'kill_at_step: SIGKILL at the end of step {STEP}', flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


_fit = Trainer.fit


def _fit_then_die(self, *args, **kwargs):
    self.state.callbacks.append(KillAtStep())  # last, after the worker's own callbacks
    return _fit(self, *args, **kwargs)


Trainer.fit = _fit_then_die
sys.argv = ['trainer.train', *sys.argv[1:]]
runpy.run_module('trainer.train', run_name='__main__', alter_sys=True)
