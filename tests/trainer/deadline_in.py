"""Run trainer.train with SLMJOBS_DEADLINE = now + $DEADLINE_IN seconds, set after the heavy
imports (composer, streaming: tens of seconds on a loaded 2-core machine), so that the deadline
falls inside training however long the start-up took. The deadline is read back from
progress.json. Test-only."""

import os
import runpy
import sys
import time

import composer  # noqa: F401  (the slow imports, before the clock starts)
import streaming  # noqa: F401

os.environ['SLMJOBS_DEADLINE'] = str(time.time() + float(os.environ['DEADLINE_IN']))
sys.argv = ['trainer.train', *sys.argv[1:]]
runpy.run_module('trainer.train', run_name='__main__', alter_sys=True)
