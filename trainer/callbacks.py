"""What the worker adds to Composer's training loop, in the order the loop meets it.

Imports Composer at module level: trainer.train imports this module only once it trains, so the
module boundary keeps `import composer` (seconds) off the path of the configuration checks.

    HandOff         BATCH_END: stop here? (deadline, signal, a non-finite loss; all ranks agree)
    SaveInterval    BATCH_CHECKPOINT: is a checkpoint due? (Composer's CheckpointSaver asks)
    SaveTimer       after the CheckpointSaver: how long the save took; progress.json; pruning
    EvalInterval    is an evaluation due? (not on a hand-off)
    HellaSwagEval   BATCH_END, after the hand-off decision: HellaSwag every eval.every steps
    ProgressLogger  console lines and the progress.json heartbeat (trainer.history's
                    MetricsHistory, after it, appends what it logged to metrics.jsonl)
    LocalCheckpointsWandBLogger  wandb, with checkpoints kept in run_dir only
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from collections import deque
from pathlib import Path
from typing import Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger, WandBLogger
from composer.utils import dist
from composer.utils.misc import create_interval_scheduler

from trainer.checkpoints import non_finite
from trainer.errors import Diverged
from slmjobs import link
from trainer.handoff import EXIT_SECONDS, StopRequest
from trainer.progress import Progress, format_duration, record_checkpoint, say


class HandOff(Callback):
    """Decides at every BATCH_END whether to stop; measures batch, save and eval times.

    At every batch boundary it asks: would one more batch plus the checkpoint save (plus an
    evaluation, if that batch would trigger one) plus the process exit still finish before the
    deadline? If not -- or if SIGUSR1, SIGUSR2 or SIGTERM arrived (trainer.handoff) -- all ranks
    agree (a one-element all-reduce), training stops at this batch, and Composer's
    CheckpointSaver writes the checkpoint for this step.

    The same all-reduce carries a second verdict: the loss of this batch, or a weight after its
    update, is NaN or infinite. Then every rank raises Diverged at this BATCH_END, before the
    CheckpointSaver's BATCH_CHECKPOINT, so no non-finite state is ever saved (no hand-off or
    final save either): the newest checkpoint stays the last finite one.

    Must be registered before Composer's CheckpointSaver (user callbacks are), with `SaveTimer`
    after it, so that BATCH_END -> BATCH_CHECKPOINT brackets the save.
    """

    STOP, DIVERGED = 1, 2  # the all-reduced flag (MAX: divergence wins over a hand-off)

    def __init__(self, deadline: Optional[float], save_seconds_guess: float, eval_every: int,
                 eval_seconds_guess_per_batch: float):
        self.deadline = deadline
        self.batch_seconds: deque[float] = deque(maxlen=5)
        self.save_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.save_seconds_guess = save_seconds_guess
        self.eval_every = eval_every
        self.eval_seconds_guess_per_batch = eval_seconds_guess_per_batch
        self.max_steps = 0
        self.stopped_early = False
        self.reason = ''
        self.checkpoint_step: Optional[int] = None  # the newest checkpoint's step (all finite)
        self._mark = time.time()  # end of the previous batch's checkpoint phase
        self._eval_started = 0.0
        self.hellaswag: Optional['HellaSwagEval'] = None  # its time is added when it is due

    # -- timing -----------------------------------------------------------------------------

    def fit_start(self, state: State, logger: Logger) -> None:
        self.max_steps = int(state.max_duration.value)
        self.checkpoint_step = int(state.timestamp.batch) or None  # resumed from it, if any
        self._mark = time.time()

    def after_checkpoint_phase(self, save_seconds: Optional[float], step: int) -> None:
        """Called by SaveTimer once the CheckpointSaver has run for batch `step` (save_seconds:
        None when it saved nothing)."""
        if save_seconds is not None:
            self.save_seconds.append(save_seconds)
            self.checkpoint_step = step
        self._mark = time.time()

    def eval_start(self, state: State, logger: Logger) -> None:
        self._eval_started = time.time()

    def eval_end(self, state: State, logger: Logger) -> None:
        self.eval_seconds.append(time.time() - self._eval_started)

    def estimate_save(self) -> float:
        return max(self.save_seconds) if self.save_seconds else self.save_seconds_guess

    def estimate_batch(self) -> float:
        return max(self.batch_seconds) if self.batch_seconds else 0.0

    def estimate_eval(self) -> float:
        if self.eval_seconds:
            return max(self.eval_seconds)
        return self.eval_seconds_guess_per_batch * self.estimate_batch()

    def _next_batch_evaluates(self, step: int) -> bool:
        nxt = step + 1
        return nxt == self.max_steps or (self.eval_every > 0 and nxt % self.eval_every == 0)

    # -- the decision -----------------------------------------------------------------------

    def batch_end(self, state: State, logger: Logger) -> None:
        now = time.time()
        self.batch_seconds.append(now - self._mark)
        step = int(state.timestamp.batch)
        local_reason = ''
        if StopRequest.signum is not None:
            local_reason = f'signal {signal.Signals(StopRequest.signum).name}'
        elif self.deadline is not None:
            extra = []  # evaluations due after the next batch; both run then, so their times add up
            if self._next_batch_evaluates(step):
                extra.append(('eval', self.estimate_eval()))
            if self.hellaswag is not None and self.hellaswag.due(step + 1, self.max_steps):
                extra.append(('hellaswag', self.hellaswag.estimate(self.estimate_batch())))
            local_reason = link.deadline_reason(self.deadline, now, self.estimate_batch(),
                                                self.estimate_save(), EXIT_SECONDS, tuple(extra))
        flag = state.device.tensor_to_device(torch.tensor([self.STOP if local_reason else 0], dtype=torch.int32))
        flag = torch.maximum(flag, self.DIVERGED * non_finite_flag(state.loss, state.model))
        dist.all_reduce(flag, reduce_operation='MAX')  # every rank stops at the same step
        verdict = int(flag.item())
        if verdict == self.DIVERGED:
            raise Diverged(self.diverged_line(state, step))
        if verdict and step < self.max_steps:
            self.stopped_early = True
            self.reason = local_reason or 'another rank asked to stop'
            state.stop_training()  # CheckpointSaver saves at this BATCH_CHECKPOINT

    def diverged_line(self, state: State, step: int) -> str:
        """What became non-finite at `step`, and what to do."""
        loss = state.total_loss_dict.get('loss/train/total', 0.0)  # averaged over the ranks by Composer
        if not math.isfinite(loss):
            what = f'the loss became non-finite ({loss}) at step {step}'
        else:
            found = next(((name, kind) for name, p in state.model.named_parameters()
                          if (kind := non_finite(p.detach())) is not None), None)
            what = (f'the weights became non-finite ({found[1]} in {found[0]}) at step {step}' if found
                    else f'the loss or the weights became non-finite on another rank at step {step}')
        if self.checkpoint_step is None:
            return (f'{what}; nothing was saved: start the run again from step 0, perhaps with a '
                    f'lower train.lr')
        return (f'{what}; nothing was saved after it: resume from the last finite checkpoint (step '
                f'{self.checkpoint_step}), perhaps with a lower train.lr')


def non_finite_flag(loss, model) -> torch.Tensor:
    """1 (int32, on the model's device) when the loss or any weight holds a NaN or an infinity,
    else 0, without waiting for the device: a tensor's sum is NaN or infinite when it holds one
    (or when it sums past ~3e38, which no trainable model's weights do)."""
    sums = [p.detach().sum(dtype=torch.float32) for p in model.parameters()]
    if isinstance(loss, torch.Tensor):
        sums.append(loss.detach().sum(dtype=torch.float32))
    return (~torch.isfinite(torch.stack(sums)).all()).to(torch.int32).reshape(1)


class SaveInterval:
    """Save when training ends or stops (hand-off), every N batches, and/or every S seconds of
    training wall-clock. The clock is Composer's total_wct, which rank 0 broadcasts, so all ranks
    take the same decision (a save is a collective)."""

    def __init__(self, every_batches: int, every_seconds: float):
        self.every_batches = every_batches
        self.every_seconds = every_seconds
        self.last_wct: Optional[float] = None

    def __call__(self, state: State, event: Event) -> bool:
        if event != Event.BATCH_CHECKPOINT:
            return False
        wct = state.timestamp.total_wct.total_seconds()
        if self.last_wct is None:
            self.last_wct = wct
        step = int(state.timestamp.batch)
        due = state.get_elapsed_duration() >= 1.0
        due = due or (self.every_batches > 0 and step % self.every_batches == 0)
        due = due or (self.every_seconds > 0 and wct - self.last_wct >= self.every_seconds)
        if due:
            self.last_wct = wct
        return due


class SaveTimer(Callback):
    """Registered after Composer's CheckpointSaver (`saver`): measures the save, records it in
    progress.json and keeps the newest `keep` checkpoints."""

    def __init__(self, handoff: HandOff, progress: Progress, checkpoint_dir: Path, keep: int):
        self.handoff = handoff
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir
        self.keep = keep
        self.saver = None  # the Trainer's CheckpointSaver, set once the Trainer exists
        self._started = 0.0

    def batch_end(self, state: State, logger: Logger) -> None:
        self._started = time.time()  # evaluation (if any) runs between here and the save

    def eval_end(self, state: State, logger: Logger) -> None:
        self._started = time.time()

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        saver = self.saver
        saved = saver is not None and saver.last_checkpoint_batch == state.timestamp.batch
        seconds = time.time() - self._started if saved else None
        self.handoff.after_checkpoint_phase(seconds, int(state.timestamp.batch))
        if saved:
            path = saver.saved_checkpoints[-1] if saver.saved_checkpoints else ''
            record_checkpoint(self.progress, int(state.timestamp.batch), path, seconds)
            if dist.get_global_rank() == 0:
                prune_checkpoints(self.checkpoint_dir, self.keep)


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints across links (Composer only rotates within one link).
    The one latest-rank0.pt points at is never removed."""
    if keep < 0:
        return
    pattern = re.compile(r'^ep\d+-ba(\d+)-rank0\.pt$')
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    latest = folder / 'latest-rank0.pt'
    protected = os.path.realpath(latest) if latest.exists() else None
    for _, path in found[:max(len(found) - keep, 0)]:
        if os.path.realpath(path) != protected:
            path.unlink(missing_ok=True)


class EvalInterval:
    """Evaluate every N batches and at the end of training -- but not on a hand-off: the time
    before the deadline belongs to the checkpoint."""

    def __init__(self, every: int, handoff: HandOff):
        self.every = every
        self.handoff = handoff
        self.inner = create_interval_scheduler(f'{every}ba' if every > 0 else '0ba',
                                               checkpoint_events=False, final_events={Event.FIT_END})

    def __call__(self, state: State, event: Event) -> bool:
        if self.handoff.stopped_early:
            return False
        if self.every <= 0:
            return event == Event.FIT_END and state.get_elapsed_duration() >= 1.0
        return self.inner(state, event)


class HellaSwagEval(Callback):
    """HellaSwag (trainer/hellaswag.py, lm-eval's numbers) every `every` steps and at the last
    step, inside the training job, on all ranks (each scores its share of the items).

    Runs at BATCH_END after HandOff has decided: a batch where training stops early is not
    scored (the time before the deadline belongs to the checkpoint), and HandOff adds this
    scoring's time to its arithmetic when the next batch will be scored. Not a Composer
    Evaluator: a second one would log a second `eval` record per step, have its time estimated
    as the max of the evaluators rather than their sum, and pad the last ranks' batches with
    repeated items. Rank 0 records each score in metrics.jsonl as its own `hellaswag` event, so it
    never replaces the `eval` (val_loss) record of the same step, and checkpoint pruning cannot
    lose it.
    """

    def __init__(self, every: int, items: list, items_name: str, tokenizer, vocab_size: int,
                 batch_items: int, history, seconds_guess: Optional[float], handoff: HandOff):
        self.every = every
        self.handoff = handoff
        handoff.hellaswag = self
        self.items = items  # the chosen items (hellaswag.Item); this rank's share is encoded once
        self.items_name = items_name
        self.tokenizer = tokenizer  # the run's tokenizers.Tokenizer
        self.vocab_size = vocab_size
        self.batch_items = batch_items
        self.history = history  # trainer.history.MetricsHistory (rank 0 writes)
        self.seconds_guess = seconds_guess
        self.seconds: list[float] = []
        self.encoded: Optional[list] = None

    def due(self, step: int, max_steps: int) -> bool:
        return step == max_steps or step % self.every == 0

    def estimate(self, batch_seconds: float) -> float:
        """The longest scoring so far; before the first, the guess (or: 3 forwards of a training
        batch's size take about one training step, and a scoring is len(items) * 4 rows)."""
        if self.seconds:
            return max(self.seconds)
        if self.seconds_guess is not None:
            return self.seconds_guess
        return batch_seconds * len(self.items) / 8

    def fit_start(self, state: State, logger: Logger) -> None:
        from trainer import hellaswag
        gpt = _gpt_of(state)
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
        self.encoded = hellaswag.encode_items(hellaswag.my_share(self.items), encode, gpt.config.block_size)

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if self.handoff.stopped_early or not self.due(step, self.handoff.max_steps):
            return  # (a hand-off shortens max_duration to this step: ask HandOff, not the state)
        from composer.core.precision import get_precision_context

        from trainer import hellaswag
        started = time.time()
        gpt = _gpt_of(state)
        was_training = gpt.training
        gpt.eval()
        try:
            lm = hellaswag.gpt_language_model(gpt, self.vocab_size, next(gpt.parameters()).device)
            with get_precision_context(state.precision):
                results = hellaswag.gather(hellaswag.score_encoded(lm, self.encoded, self.batch_items))
        finally:
            gpt.train(was_training)
        seconds = time.time() - started
        self.seconds.append(seconds)
        summary = hellaswag.summarize(results)
        if dist.get_global_rank() == 0:
            say(f'hellaswag step {step} | acc_norm {summary["acc_norm"]:.4f} | acc {summary["acc"]:.4f} | '
                f'acc_norm_tokens {summary["acc_norm_tokens"]:.4f} | {summary["n"]} items ({self.items_name}) '
                f'| {seconds:.1f} s')
            self.history.record('hellaswag', state, {
                'step': step, 'tokens': int(state.timestamp.token), **summary,
                'items': self.items_name, 'seconds': round(seconds, 3)})


def _gpt_of(state: State):
    """trainer.gpt.GPT inside the Composer model (which DDP may wrap)."""
    model = state.model.module if hasattr(state.model, 'module') else state.model
    return model.model



class ProgressLogger(Callback):
    """Console lines and progress.json updates from inside the Composer loop."""

    def __init__(self, progress: Progress, log_every: int, progress_every_seconds: float,
                 bytes_per_token: float, batch_sleep: float, train_dataset=None):
        self.progress = progress
        self.log_every = log_every
        self.progress_every_seconds = progress_every_seconds
        self.bytes_per_token = bytes_per_token
        self.batch_sleep = batch_sleep
        self.train_dataset = train_dataset  # counts the samples it reads (num_workers=0 only)
        self.window_start: Optional[tuple[float, int, int]] = None  # (time, step, tokens)
        self.first_batch_pending = True
        self.rank_zero = progress.write_enabled

    def _log(self, message: str) -> None:
        if self.rank_zero:
            say(message)

    def fit_start(self, state: State, logger: Logger) -> None:
        progress = self.progress
        step = int(state.timestamp.batch)
        if step > 0:
            latest = progress.path.parent / 'checkpoints' / 'latest-rank0.pt'
            path = os.path.realpath(latest) if latest.exists() else None
            progress.update(checkpoint_step=step, checkpoint_path=path,
                            checkpoint_time=os.path.getmtime(path) if path else None)
            self._log(f'resumed from {path} at step {step}/{progress.data["max_steps"]}')
        progress.update(state='training', step=step, tokens_seen=int(state.timestamp.token))
        progress.write()
        self.window_start = (time.time(), step, int(state.timestamp.token))

    def batch_start(self, state: State, logger: Logger) -> None:
        if self.first_batch_pending and self.train_dataset is not None:
            self.first_batch_pending = False
            fetched = getattr(self.train_dataset, 'samples_fetched', None)
            if fetched is not None and fetched >= 0:
                self._log(f'data: {fetched} samples read to start this link at step '
                          f'{int(state.timestamp.batch)} (no replay of earlier batches)')

    def batch_end(self, state: State, logger: Logger) -> None:
        progress = self.progress
        if self.batch_sleep > 0:
            time.sleep(self.batch_sleep)  # testing aid, see train.debug_batch_sleep
        now = time.time()
        step = int(state.timestamp.batch)
        tokens = int(state.timestamp.token)
        if progress.data['first_step_at'] is None:
            progress.update(first_step_at=now)
        t0, step0, tokens0 = self.window_start
        elapsed = max(now - t0, 1e-9)
        progress.update(step=step, tokens_seen=tokens)
        if step % self.log_every == 0 or step == progress.data['max_steps']:
            loss = float(state.loss.item()) if hasattr(state.loss, 'item') else float('nan')
            steps_per_sec = (step - step0) / elapsed
            tokens_per_sec = (tokens - tokens0) / elapsed
            progress.update(loss=loss, steps_per_sec=round(steps_per_sec, 4),
                            tokens_per_sec=round(tokens_per_sec, 1))
            self.window_start = (now, step, tokens)
            max_steps = progress.data['max_steps']
            eta = (max_steps - step) / steps_per_sec if steps_per_sec > 0 else math.inf
            lr = state.schedulers[0].get_last_lr()[0] if state.schedulers else float('nan')
            bits_per_byte = loss / math.log(2) / self.bytes_per_token
            progress.last_log = {
                'step': step, 'tokens': tokens, 'loss': loss, 'bits_per_byte': bits_per_byte,
                'lr': lr, 'tokens_per_sec': round(tokens_per_sec, 1),
                'steps_per_sec': round(steps_per_sec, 4)}
            self._log(f'step {step}/{max_steps} | loss {loss:.4f} | '
                      f'bpb {bits_per_byte:.3f} | lr {lr:.2e} | '
                      f'{tokens_per_sec:,.0f} tok/s | {steps_per_sec:.2f} step/s | '
                      f'eta {format_duration(eta) if eta != math.inf else "?"}')
        progress.write_if_due(self.progress_every_seconds)

    def eval_end(self, state: State, logger: Logger) -> None:
        values = {name: float(metric.compute()) for name, metric in state.eval_metrics.get('val', {}).items()}
        if values:
            self.progress.last_eval = {'step': int(state.timestamp.batch), 'tokens': int(state.timestamp.token),
                                       **{f'val_{name}': value for name, value in values.items()}}
            self._log(f'eval step {int(state.timestamp.batch)} | val loss {values["loss"]:.4f} | '
                      f'ppl {values["perplexity"]:.2f} | bpb {values["bits_per_byte"]:.3f} | '
                      f'acc {values["accuracy"]:.3f}')


class LocalCheckpointsWandBLogger(WandBLogger):
    """Composer's WandBLogger, with two fixes for this stack:
    - Composer 0.32.1 (its last release) calls wandb.run.get_url(), which wandb 0.31 removed in
      favour of the `url` property: give the Run class the old method back if it lacks it.
    - On a run's first link Composer's autoresume asks every logger for a checkpoint to
      download, and WandBLogger tries the wandb API (an error without credentials, a stranger's
      artifact with them). Checkpoints live in run_dir only: say "not there".
    """

    def __init__(self, **kwargs):
        from wandb.sdk.wandb_run import Run
        if not hasattr(Run, 'get_url'):
            Run.get_url = lambda self: self.url
        super().__init__(**kwargs)

    def download_file(self, remote_file_name, destination, overwrite=False, progress_bar=True):
        raise FileNotFoundError(f'{remote_file_name}: checkpoints are only read from run_dir')
