"""`slmjobs.hf.HandOff`: a Hugging Face `TrainerCallback` that lets a `Trainer` script ride
`slmjobs run` (pip install slmjobs[hf]).

    handoff = HandOff()
    trainer = Trainer(model, TrainingArguments(output_dir=handoff.output_dir, ...),
                      callbacks=[handoff], ...)
    trainer.train(resume_from_checkpoint=resume_from())
    sys.exit(handoff.exit_status())

At every step end it asks slmjobs.link whether one more step, a save and the exit still fit
before SLMJOBS_DEADLINE (or whether a stop signal came); the ranks agree (torch.distributed),
the Trainer saves `checkpoint-<step>` (model, optimizer, scheduler, RNG, trainer state) and stops,
and rank 0 declares that checkpoint once it is written. Hugging Face's own checkpoint-on-signal
(transformers >= 5) reacts to SIGTERM only, which Grid Engine never sends before its SIGKILL,
and returns from train() as if finished; this stops at a step boundary and exits 75.
"""

from __future__ import annotations

import os
import time

from transformers import TrainerCallback

from slmjobs import link

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def resume_from() -> str | None:
    """The checkpoint directory the run declared last (pass it to
    `trainer.train(resume_from_checkpoint=...)`), or None on the first link."""
    return link.resume_from()


class HandOff(TrainerCallback):
    def __init__(self, save_seconds_guess: float = link.SAVE_SECONDS_GUESS):
        self.clock = link.HandOff(save_seconds_guess=save_seconds_guess)
        self._save_started: float | None = None

    @property
    def output_dir(self) -> str:
        """Where the Trainer should save: the run's checkpoint directory."""
        return link.checkpoint_dir() or "checkpoints"

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(f"slmjobs.hf: training from global_step {state.global_step}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            return control  # the last step: training ends now, a hand-off would only cost a link
        reason = self.clock.local_reason()
        if link.agree(bool(reason)):
            self.clock.stop(reason or "another rank asked to stop")
            control.should_save = control.should_training_stop = True
        if control.should_save:  # ours or the Trainer's own: timed for the next decision
            self._save_started = time.time()
        return control

    def on_save(self, args, state, control, **kwargs):
        """Called once the checkpoint is completely written."""
        if self._save_started is not None:
            self.clock.save_took(time.time() - self._save_started)
            self._save_started = None
        path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}-{state.global_step}")
        if state.is_world_process_zero:
            link.checkpoint_done(path, state.global_step)
            if self.clock.stopped:
                print(f"slmjobs.hf: handed off at global_step {state.global_step} "
                      f"({self.clock.reason}); saved {path}", flush=True)
        return control

    def exit_status(self) -> int:
        """75 when it stopped for the deadline or a signal, else 0 (max_steps reached)."""
        return link.exit_status(finished=not self.clock.stopped)
