"""`slmjobs.lightning.HandOff`: a PyTorch Lightning callback that lets a Lightning script ride
`slmjobs run` (pip install slmjobs[lightning]).

    handoff = HandOff()
    trainer = L.Trainer(max_steps=..., callbacks=[handoff])
    trainer.fit(model, data, ckpt_path=handoff.resume_from())
    sys.exit(handoff.exit_status())

At every training batch end it asks slmjobs.link whether one more batch, a save and the exit
still fit before SLMJOBS_DEADLINE (or whether a stop signal came); all ranks agree through the
strategy, stop at that same step, write `last.ckpt` in SLMJOBS_CHECKPOINT_DIR (every rank takes
part in the save, as Lightning requires) and rank 0 declares it. The script then exits 75, and
the next link resumes from it with `fit(ckpt_path=...)`. Lightning's own auto-requeue is
SLURM-only and saves inside the signal handler; this takes the decision at a batch boundary.
"""

from __future__ import annotations

import os

from slmjobs import link

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    from pytorch_lightning import Callback

LAST = "last.ckpt"


class HandOff(Callback):
    def __init__(self, dirpath: str | None = None, save_seconds_guess: float = link.SAVE_SECONDS_GUESS):
        self.dirpath = dirpath or link.checkpoint_dir() or "checkpoints"
        self.clock = link.HandOff(save_seconds_guess=save_seconds_guess)

    @staticmethod
    def resume_from() -> str | None:
        """The checkpoint the run declared last (pass it to `fit(ckpt_path=...)`), or None."""
        return link.resume_from()

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f"slmjobs.lightning: training from global_step {trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            return  # the last step: the fit ends now, a hand-off would only cost a link
        reason = self.clock.local_reason()
        if not trainer.strategy.reduce_boolean_decision(bool(reason), all=False):
            return
        self.clock.stop(reason or "another rank asked to stop")
        trainer.should_stop = True
        path = os.path.join(self.dirpath, LAST)
        with self.clock.saving():
            trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            link.checkpoint_done(path, trainer.global_step)
            print(f"slmjobs.lightning: handed off at global_step {trainer.global_step} "
                  f"({self.clock.reason}); saved {path}", flush=True)

    def exit_status(self) -> int:
        """75 when it stopped for the deadline or a signal, else 0 (the fit reached its end)."""
        return link.exit_status(finished=not self.clock.stopped)
