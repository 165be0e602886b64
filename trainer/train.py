"""The training worker: a GPT-2-family model on Composer, resumable and deadline-aware.

    python -m trainer.train model=tiny run_name=demo                      # one process
    composer -n 2 -m trainer.train model=gpt2 run_name=r run_dir=/abs/r    # two ranks
    python -m trainer.validate model=gpt2 ...                            # print the config, train nothing

Config groups (trainer/conf): model (preset + its recipe), data, train, checkpoint, wandb;
top level: run_name, run_dir, seed. Everything lands in run_dir: checkpoints/ (Composer
autoresume: a re-run continues exactly where the last checkpoint left off), progress.json
(heartbeat), wandb/ (offline unless wandb is configured).

Exit status: 0 finished (max_steps reached, final checkpoint written); 75 handed off (stopped
by SLMJOBS_DEADLINE or SIGUSR1/SIGUSR2/SIGTERM, checkpoint written at the stop step, run it
again to continue); 2 bad configuration or input (nothing written; also wandb refusing the
credentials); 74 no space left to save a checkpoint; 65 diverged (the loss or the weights became
NaN/inf: stopped at that batch, nothing saved after the last finite checkpoint); anything else
crashed.
See docs/CONTRACTS.md.

Read top to bottom, this is one link's life: main -> run: compose the configuration, check it
and make the plan (trainer.validate: no torch, no Composer, so bad input fails in about a
second), then fit: ranks, data, model, optimizer, callbacks, Trainer, fit, finish. Composer is
imported only there; the callbacks it runs live in trainer.callbacks.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import NoReturn, Optional

from trainer.errors import EXIT_BAD_INPUT, EXIT_FINISHED, EXIT_HANDED_OFF, BadInput
from trainer.failures import exit_for
from trainer.handoff import deadline_from_env, ignore_signals_for_exit, install_signal_handlers
from trainer.progress import Progress, eprint, fail_line, say
from trainer.run_inputs import keep_run_inputs
from trainer.validate import Plan, check_device_and_precision, compose, validate

SAVE_BYTES_PER_SECOND = 200e6  # save-time guess before the first save is measured


# ---------------------------------------------------------------------------------------------
# Start and exit
# ---------------------------------------------------------------------------------------------

def main() -> None:
    atexit.register(skip_interpreter_teardown)  # registered first, so it runs last
    install_signal_handlers()  # before any thread exists; a signal during start-up hands off at the first batch
    leave(run(sys.argv[1:]))


def run(overrides: list[str]) -> int:
    """One link: the exit status. A crash raises (and is recorded in progress.json)."""
    try:
        plan = make_plan(compose(overrides))
        hellaswag_items = read_hellaswag_items(plan)  # a malformed file is bad input, not a crash
    except BadInput as e:
        eprint(f'error: {e}')
        return EXIT_BAD_INPUT
    progress = start_progress(plan)
    try:
        return fit(plan, progress, hellaswag_items)
    except BaseException as e:
        progress.update(state='failed')
        try:
            progress.write()
        except OSError:
            pass  # a full disk: the exit status and the log line below still tell
        meaning = exit_for(e, plan.checkpoint_dir)
        if meaning is not None:  # it would fail the same way again: not a crash
            eprint(f'error: {meaning[1]}')
            return meaning[0]
        eprint(f'training failed: {fail_line(e)}')
        raise


_exit_status: Optional[int] = None


def leave(status: int) -> NoReturn:
    """The way out for every status training decided. sys.exit runs the atexit hooks (Composer,
    wandb and streaming close and unlink their files there); the last of them,
    skip_interpreter_teardown, then ends the process with this status. A late SIGTERM from the
    `composer` launcher (it terminates the other ranks as soon as one exits non-zero) cannot
    turn the agreed status into a signal death meanwhile."""
    global _exit_status
    ignore_signals_for_exit()
    _exit_status = status
    sys.exit(status)


def skip_interpreter_teardown() -> None:
    """What is left after the atexit hooks is the interpreter's teardown of torch, transformers
    and friends, measured at 4-8 s here -- time a hand-off before a deadline does not have."""
    if _exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)


# ---------------------------------------------------------------------------------------------
# The plan: everything that can be known before Composer
# ---------------------------------------------------------------------------------------------

def make_plan(config: dict) -> Plan:
    """The checks any machine can run (trainer.validate), then what only this process knows:
    the device it sees, its rank, its deadline."""
    plan = validate(config, world_size=int(os.environ.get('WORLD_SIZE', '1')))
    train = config['train']
    device, precision = check_device_and_precision(train['device'], train['precision'],
                                                   *visible_device(train['device']))
    try:
        deadline = deadline_from_env()
    except ValueError:
        raise BadInput(f'SLMJOBS_DEADLINE={os.environ["SLMJOBS_DEADLINE"]!r}: must be epoch seconds') from None
    return dataclasses.replace(plan, device=device, precision=precision,
                               rank=int(os.environ.get('RANK', '0')), deadline=deadline)


def visible_device(requested: str) -> tuple[str, Optional[float]]:
    """'cpu' or 'gpu', and the GPU's compute capability (8.0 = A100)."""
    if requested == 'cpu':
        return 'cpu', None
    import torch
    if not torch.cuda.is_available():
        return 'cpu', None
    major, minor = torch.cuda.get_device_capability()
    return 'gpu', major + minor / 10


def start_progress(plan: Plan) -> Progress:
    """progress.json in state "starting": `slmjobs status` sees the link during the imports."""
    rank_zero = plan.rank == 0
    if rank_zero:
        plan.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        keep_run_inputs(plan.run_dir, plan.data_dir, plan.config['model'], plan.vocab_size)  # for sample, export
    wandb_id = wandb_run_id(plan.run_dir) if (plan.config['wandb']['enabled'] and rank_zero) else None
    progress = Progress(plan.run_dir / 'progress.json', plan.run_name, plan.config['train']['max_steps'],
                        plan.deadline, wandb_id, write=rank_zero)
    progress.write()
    return progress


def wandb_run_id(run_dir: Path) -> str:
    """One wandb run per slmjobs run across all links: the id is made once and kept in run_dir."""
    path = run_dir / 'wandb' / 'slmjobs-run-id'
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = f'{run_dir.name[:40]}-{secrets.token_hex(4)}'
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_text(run_id + '\n')
    os.replace(tmp, path)
    return run_id


# ---------------------------------------------------------------------------------------------
# The fit, in the order it runs
# ---------------------------------------------------------------------------------------------

def read_hellaswag_items(plan: Plan) -> Optional[tuple[list, str]]:
    """eval.every: (the items to score, how records name them), read before anything is written."""
    if plan.hellaswag_data is None:
        return None
    from trainer import hellaswag
    every = hellaswag.read_items(plan.hellaswag_data)
    k = plan.config['eval']['items']
    return hellaswag.subset(every, k), hellaswag.subset_name(k, len(every))


def fit(plan: Plan, progress: Progress, hellaswag_items: Optional[tuple[list, str]] = None) -> int:
    device = start_ranks(plan)
    settle_resume_point(plan)
    train_dataset, train_data, val_loader = make_data(plan)
    model = make_model(plan)
    optimizer, scheduler = make_optimizer(plan, model)
    handoff = make_handoff(plan, model)
    callbacks = make_callbacks(plan, progress, handoff, train_dataset, hellaswag_items)
    save_timer = make_save_timer(plan, progress, handoff)
    evaluators = make_evaluators(plan, model, val_loader, handoff)
    loggers = make_loggers(plan, progress)
    announce(plan, model)
    trainer = make_trainer(plan, device, model, optimizer, scheduler, train_data, evaluators,
                           callbacks, save_timer, loggers)
    trainer.fit()
    return finish(plan, trainer, handoff, progress)


def start_ranks(plan: Plan):
    """The device, and the process group of all ranks (gloo on CPU, NCCL on GPUs)."""
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.utils import dist
    device = DeviceGPU() if plan.device == 'gpu' else DeviceCPU()
    dist.initialize_dist(device)
    return device


def settle_resume_point(plan: Plan) -> None:
    """Rank 0 makes `latest-rank0.pt` name the newest checkpoint that really loads, so a file
    damaged after the chain's `begin` checked it (a bad disk, a second writer) is set aside,
    said in the log and the ledger, instead of crashing this link; the other ranks wait, then
    Composer's autoresume loads what it points at. No intact checkpoint at all: nothing to
    resume from, and training from scratch would silently drop the run's work."""
    from composer.utils import dist

    from trainer.checkpoints import record_set_aside, settle_latest
    if plan.rank == 0:
        step, passed = settle_latest(plan.checkpoint_dir)
        for path, bad_step, why in passed:
            say(f'checkpoint {path} (step {bad_step}) cannot be resumed from: {why}; '
                + (f'set aside, resuming from step {step}' if step is not None else 'set aside'))
        link = os.environ.get('SLMJOBS_LINK')
        record_set_aside(plan.run_dir, int(link) if link and link.isdigit() else None, passed, step)
        if passed and step is None:
            dist.barrier()
            raise BadInput(f'no intact checkpoint is left in {plan.checkpoint_dir} to resume from '
                           f'(damaged ones are set aside as *.damaged); remove latest-rank0.pt '
                           f'to start the training over')
    dist.barrier()


def make_data(plan: Plan):
    """The training stream (and its dataset, which counts what it reads), and the validation
    loader where there is a val split to evaluate on."""
    from composer.core import DataSpec

    from trainer.data import make_loader, tokens_in_batch
    data = plan.config['data']
    train_dataset, train_loader = make_loader(
        plan.data_dir / 'train', plan.per_device_batch, shuffle=data['shuffle'],
        shuffle_seed=data['shuffle_seed'], num_canonical_nodes=data['num_canonical_nodes'],
        num_workers=data['num_workers'], drop_last=True)
    val_loader = None
    if plan.eval_batches != 0:
        _, val_loader = make_loader(
            plan.data_dir / 'val', plan.per_device_batch, shuffle=False, shuffle_seed=0,
            num_canonical_nodes=data['num_canonical_nodes'], num_workers=0, drop_last=False)
    return train_dataset, DataSpec(train_loader, get_num_tokens_in_batch=tokens_in_batch), val_loader


def make_model(plan: Plan):
    from composer.utils import reproducibility

    from trainer.gpt import GPTConfig, make_composer_model
    reproducibility.seed_all(plan.config['seed'])  # identical initial weights on every rank
    shape = plan.config['model']
    gpt_config = GPTConfig(vocab_size=plan.vocab_size, block_size=shape['block_size'],
                           n_layer=shape['n_layer'], n_head=shape['n_head'], n_embd=shape['n_embd'],
                           dropout=float(shape['dropout']), bias=shape['bias'])
    return make_composer_model(gpt_config, float(plan.dataset['bytes_per_token']),
                               train_metrics=plan.config['train']['train_metrics'])


def make_optimizer(plan: Plan, model):
    """AdamW with decay on matrices only, linear warmup then cosine decay [GPT-3 §B]."""
    import torch
    from composer.optim import CosineAnnealingWithWarmupScheduler
    train = plan.config['train']
    optimizer = torch.optim.AdamW(
        model.model.optimizer_groups(float(train['weight_decay'])), lr=float(train['lr']),
        betas=tuple(train['betas']), eps=float(train['eps']))
    scheduler = CosineAnnealingWithWarmupScheduler(t_warmup=f'{train["warmup_steps"]}ba',
                                                   alpha_f=float(train['min_lr_ratio']))
    return optimizer, scheduler


def make_handoff(plan: Plan, model):
    from trainer.callbacks import HandOff
    save_guess = plan.config['checkpoint']['save_seconds_guess']
    if save_guess is None:
        save_guess = 1.0 + model.model.num_params() * 4 * 3 / SAVE_BYTES_PER_SECOND  # weights + two Adam moments
    return HandOff(plan.deadline, float(save_guess), plan.config['train']['eval_every'],
                   eval_seconds_guess_per_batch=0.5 * eval_batches_per_rank(plan))


def eval_batches_per_rank(plan: Plan) -> int:
    """How many batches one evaluation reads on each rank: `train.eval_batches`, or for the
    whole split (null) its windows over the ranks' batches. Until the first evaluation is timed,
    the hand-off guesses its length from this: a whole-split evaluation is never guessed at 0 s
    (a link that starts one just before its deadline would overrun into the h_rt kill)."""
    if plan.eval_batches is not None:
        return plan.eval_batches
    windows = plan.dataset['splits'].get('val', {}).get('windows') or 0
    return math.ceil(windows / (plan.per_device_batch * plan.world_size))


def make_callbacks(plan: Plan, progress: Progress, handoff, train_dataset, hellaswag_items=None) -> list:
    """The callbacks Composer runs, in this order, before its own CheckpointSaver (the
    SaveTimer runs after it, see make_save_timer). HandOff stays first: it decides the stop."""
    from trainer.callbacks import ProgressLogger
    from trainer.history import HISTORY_NAME, MetricsHistory
    train = plan.config['train']
    history = MetricsHistory(plan.run_dir / HISTORY_NAME, progress)  # records what ProgressLogger logged
    callbacks = [
        handoff,
        ProgressLogger(progress, train['log_every'], float(train['progress_every_seconds']),
                       float(plan.dataset['bytes_per_token']), float(train['debug_batch_sleep']),
                       train_dataset if plan.config['data']['num_workers'] == 0 else None),
        history,
    ]
    if hellaswag_items is not None:
        callbacks.append(make_hellaswag_eval(plan, handoff, history, *hellaswag_items))
    return callbacks


def make_hellaswag_eval(plan: Plan, handoff, history, items: list, items_name: str):
    """eval.every: HellaSwag on the dataset's own tokenizer (read on every rank from the dataset,
    not from the run's copy, which rank 0 may still be writing)."""
    from trainer.callbacks import HellaSwagEval
    from trainer.run_inputs import tokenizer_in
    evaluation = plan.config['eval']
    tok, info = tokenizer_in(plan.data_dir)
    return HellaSwagEval(evaluation['every'], items, items_name, tok, int(info['vocab_size']),
                         evaluation['batch_items'], history, evaluation['seconds_guess'], handoff)


def make_save_timer(plan: Plan, progress: Progress, handoff):
    """Runs after Composer's CheckpointSaver (make_trainer appends it): times each save, records
    it in progress.json, prunes old checkpoints."""
    from trainer.callbacks import SaveTimer
    return SaveTimer(handoff, progress, plan.checkpoint_dir, plan.config['checkpoint']['keep'])


def make_loggers(plan: Plan, progress: Progress) -> list:
    """wandb, online only if the user set it up; one wandb run per run across all links."""
    wandb = plan.config['wandb']
    if not wandb['enabled']:
        return []
    from trainer.callbacks import LocalCheckpointsWandBLogger
    return [LocalCheckpointsWandBLogger(
        project=str(wandb['project']), entity=wandb['entity'], name=plan.run_name,
        init_kwargs={'id': progress.data['wandb_id'], 'resume': 'allow', 'dir': str(plan.run_dir),
                     'mode': wandb_mode(wandb['mode']), 'config': plan.config})]


def wandb_mode(configured: str) -> str:
    """Online only if the user set wandb up; a cluster node without credentials stays offline."""
    if configured != 'auto':
        return configured
    if os.environ.get('WANDB_MODE'):
        return os.environ['WANDB_MODE']
    if os.environ.get('WANDB_API_KEY'):
        return 'online'
    netrc = Path(os.environ.get('NETRC', Path.home() / '.netrc'))
    try:
        if 'api.wandb.ai' in netrc.read_text():
            return 'online'
    except OSError:
        pass
    return 'offline'


def make_evaluators(plan: Plan, model, val_loader, handoff) -> list:
    if val_loader is None:
        return []
    from composer.core import DataSpec, Evaluator

    from trainer.callbacks import EvalInterval
    from trainer.data import tokens_in_batch
    batches = plan.eval_batches
    return [Evaluator(label='val', dataloader=DataSpec(val_loader, get_num_tokens_in_batch=tokens_in_batch),
                      metric_names=list(model.val_metrics),
                      eval_interval=EvalInterval(plan.config['train']['eval_every'], handoff),
                      subset_num_batches=batches if batches is not None else -1)]


def make_trainer(plan: Plan, device, model, optimizer, scheduler, train_data, evaluators,
                 callbacks, save_timer, loggers):
    from composer import Trainer
    from composer.algorithms import GradientClipping

    from trainer.callbacks import SaveInterval
    train, checkpoint = plan.config['train'], plan.config['checkpoint']
    microbatch = None if (plan.microbatch == 'auto' and plan.device == 'cpu') else plan.microbatch
    trainer = Trainer(
        run_name=plan.run_name,
        model=model,
        train_dataloader=train_data,
        eval_dataloader=evaluators or None,
        max_duration=f'{train["max_steps"]}ba',
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        algorithms=[GradientClipping(clipping_type='norm', clipping_threshold=float(train['grad_clip']))]
        if train['grad_clip'] else [],
        callbacks=callbacks,
        loggers=loggers,
        device=device,
        precision=plan.precision,
        device_train_microbatch_size=microbatch,
        save_folder=str(plan.checkpoint_dir),
        save_filename='ep{epoch}-ba{batch}-rank{rank}.pt',
        save_latest_filename='latest-rank{rank}.pt',
        save_overwrite=True,  # a torn file newer than latest (kill during a save) must not block resume
        save_interval=SaveInterval(checkpoint['save_every_batches'], float(checkpoint['save_every_seconds'])),
        save_num_checkpoints_to_keep=-1,  # pruned across links by callbacks.prune_checkpoints
        autoresume=True,
        seed=plan.config['seed'],
        log_to_console=False,
        progress_bar=False,
        compile_config={} if train['compile'] else None,
    )
    save_timer.saver = trainer._checkpoint_saver
    trainer.state.callbacks.append(save_timer)  # after the CheckpointSaver: times the save
    return trainer


def announce(plan: Plan, model) -> None:
    """What this link is about to do, for the job log."""
    if plan.rank != 0:
        return
    config = plan.config
    wandb = f' wandb/ ({wandb_mode(config["wandb"]["mode"])})' if config['wandb']['enabled'] else ''
    say(f'run {plan.run_name}: model {config["model"]["name"]} ({model.model.num_params() / 1e6:.2f}M '
        f'parameters), {plan.world_size} rank(s) on {plan.device}, {plan.precision}, global batch '
        f'{config["train"]["global_batch_size"]} x {plan.dataset["seq_len"]} tokens, '
        f'{config["train"]["max_steps"]} steps')
    say(f'run dir {plan.run_dir}: checkpoints/ progress.json' + wandb)
    say(f'data {plan.data_dir} ({plan.dataset["tokenizer"]["kind"]} tokenizer, '
        f'{plan.dataset["bytes_per_token"]:.3f} bytes/token)')
    if plan.deadline is not None:
        say(f'deadline {time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(plan.deadline))} '
            f'(in {plan.deadline - time.time():.0f} s)')


def finish(plan: Plan, trainer, handoff, progress: Progress) -> int:
    """After fit: finished or handed off, in progress.json, the log and the exit status; every
    rank leaves together with the same status."""
    from composer.utils import dist
    step = int(trainer.state.timestamp.batch)
    max_steps = plan.config['train']['max_steps']
    handed_off = handoff.stopped_early and step < max_steps
    progress.update(state='handed_off' if handed_off else 'finished', step=step)
    progress.write()
    trainer.close()
    dist.barrier()
    checkpoint = progress.data['checkpoint_path']
    log = say if plan.rank == 0 else (lambda message: None)
    if handed_off:
        log(f'handed off at step {step}/{max_steps} ({handoff.reason}); checkpoint {checkpoint}; '
            f'exit {EXIT_HANDED_OFF} (run again to continue)')
        return EXIT_HANDED_OFF
    log(f'finished: step {step}/{max_steps}; checkpoint {checkpoint}; run dir {plan.run_dir} '
        f'(progress.json, metrics.jsonl' + (', wandb/: metrics, `wandb sync` uploads an offline run'
                             if plan.config['wandb']['enabled'] else '') + ')')
    return EXIT_FINISHED


if __name__ == '__main__':
    main()
