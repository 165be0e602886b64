"""Run trainer.train, but SIGKILL the process in the middle of writing the checkpoint for step
$KILL_IN_SAVE_STEP: the file is left half-written (truncated) and `latest` is not updated, which
is exactly what a hard kill during torch.save leaves behind. Test-only fault injection."""

import os
import runpy
import signal
import sys

import composer.utils.checkpoint as checkpoint

STEP = os.environ['KILL_IN_SAVE_STEP']
_write = checkpoint._write_checkpoint_file


def _write_then_die(state_dict, filename):
    _write(state_dict, filename)
    if f'-ba{STEP}-' in os.path.basename(filename):
        os.truncate(filename, os.path.getsize(filename) // 2)
        print(f'kill_in_save: killed while writing {filename}', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint._write_checkpoint_file = _write_then_die
sys.argv = ['trainer.train', *sys.argv[1:]]
runpy.run_module('trainer.train', run_name='__main__', alter_sys=True)
