"""The training worker: a GPT-2-family model on Composer, resumable and deadline-aware.

    python -m trainer.train model=tiny run_name=demo                      # one process
    composer -n 2 -m trainer.train model=gpt2 run_name=r run_dir=/abs/r    # two ranks
    python -m trainer.train --cfg job                                    # print the config

Config groups (trainer/conf): model (preset + its recipe), data, train, checkpoint, wandb;
top level: run_name, run_dir, seed. Everything lands in run_dir: checkpoints/ (Composer
autoresume: a re-run continues exactly where the last checkpoint left off), progress.json
(heartbeat), wandb/ (offline unless wandb is configured).

Exit status: 0 finished (max_steps reached, final checkpoint written); 75 handed off (stopped
by SLMJOBS_DEADLINE or SIGUSR1/SIGUSR2/SIGTERM, checkpoint written at the stop step, run it
again to continue); 2 bad configuration or input (nothing written); anything else crashed.
See docs/CONTRACTS.md.

Bad input is checked before `import composer` (~7 s), so it fails fast.
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainer.errors import EXIT_BAD_INPUT, EXIT_FINISHED, EXIT_HANDED_OFF, BadInput
from trainer.handoff import deadline_from_env, ignore_signals_for_exit, install_signal_handlers

CONF_DIR = Path(__file__).resolve().parent / 'conf'
PRECISIONS = ('auto', 'fp32', 'amp_fp16', 'amp_bf16')
DEVICES = ('auto', 'cpu', 'gpu')
SAVE_BYTES_PER_SECOND = 200e6  # save-time guess before the first save is measured


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / 'model').glob('*.yaml'))


def check_preset_overrides(argv: list[str]) -> None:
    """Hydra reports an unknown config-group option as a multi-line error with exit 1; catch the
    common mistake first, with the contract's one line and exit 2."""
    for arg in argv:
        key, _, value = arg.lstrip('+').partition('=')
        if key == 'model' and value not in model_presets():
            raise BadInput(f'model={value}: unknown preset; allowed: {", ".join(model_presets())}')


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked without Composer.
# ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    run_name: str
    run_dir: Path
    checkpoint_dir: Path
    data_dir: Path
    dataset: dict
    vocab_size: int
    world_size: int
    rank: int
    per_device_batch: int
    microbatch: Any
    eval_batches: Optional[int]
    deadline: Optional[float]
    device: str
    precision: str


def resolve_data_path(path: str) -> Path:
    from trainer.prepare import data_root
    p = Path(os.path.expanduser(path))
    return (p if p.is_absolute() else data_root() / p).absolute()


def _positive_int(name: str, value, allow_zero: bool = False) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise BadInput(f'{name}={value}: must be a {"non-negative" if allow_zero else "positive"} integer')
    return value


def validate(cfg) -> Plan:
    from trainer.prepare import is_finished_dataset, read_dataset_info

    run_name = str(cfg.run_name)
    if not run_name or any(c in run_name for c in '/ \t\n') or run_name.startswith('.'):
        raise BadInput(f'run_name={run_name!r}: must be non-empty, without "/" or spaces, not starting with "."')
    if cfg.model.name not in model_presets():
        raise BadInput(f'model={cfg.model.name}: unknown preset; allowed: {", ".join(model_presets())}')

    data_dir = resolve_data_path(str(cfg.data.path))
    if not is_finished_dataset(data_dir) or not (data_dir / 'train' / 'index.json').is_file():
        raise BadInput(f'data.path={cfg.data.path}: no prepared dataset (shards) at {data_dir}; '
                       f'create one with: python -m trainer.prepare --source builtin --out {data_dir}')
    info = read_dataset_info(data_dir)
    has_val = (data_dir / 'val' / 'index.json').is_file()

    block_size = _positive_int('model.block_size', cfg.model.block_size)
    if info['seq_len'] > block_size:
        raise BadInput(f'data.path={cfg.data.path}: windows of {info["seq_len"]} tokens are longer than '
                       f'model.block_size={block_size}; allowed: seq_len <= block_size (re-prepare with '
                       f'--seq-len {block_size}, or raise model.block_size)')
    data_vocab = int(info['tokenizer']['vocab_size'])
    vocab_size = data_vocab if cfg.model.vocab_size is None else _positive_int('model.vocab_size', cfg.model.vocab_size)
    if data_vocab > vocab_size:
        raise BadInput(f'model.vocab_size={vocab_size}: smaller than the dataset tokenizer\'s vocabulary '
                       f'({info["tokenizer"]["kind"]}, {data_vocab} ids); allowed: >= {data_vocab}, or null')

    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    global_batch = _positive_int('train.global_batch_size', cfg.train.global_batch_size)
    if global_batch % world_size:
        raise BadInput(f'train.global_batch_size={global_batch}: not divisible by the {world_size} ranks')
    per_device = global_batch // world_size
    microbatch = cfg.train.microbatch_size
    if microbatch not in (None, 'auto'):
        _positive_int('train.microbatch_size', microbatch)
        if per_device % microbatch:
            raise BadInput(f'train.microbatch_size={microbatch}: must divide the per-rank batch {per_device}')
    train_windows = info['splits']['train']['windows']
    if train_windows < global_batch:
        raise BadInput(f'data.path={cfg.data.path}: {train_windows} training windows, fewer than '
                       f'train.global_batch_size={global_batch}')

    _positive_int('train.max_steps', cfg.train.max_steps)
    _positive_int('train.warmup_steps', cfg.train.warmup_steps, allow_zero=True)
    _positive_int('train.eval_every', cfg.train.eval_every, allow_zero=True)
    _positive_int('train.log_every', cfg.train.log_every)
    _positive_int('checkpoint.save_every_batches', cfg.checkpoint.save_every_batches, allow_zero=True)
    eval_batches = cfg.train.eval_batches
    if eval_batches is not None:
        _positive_int('train.eval_batches', eval_batches)
    if not has_val:
        eval_batches = 0
    if cfg.train.precision not in PRECISIONS:
        raise BadInput(f'train.precision={cfg.train.precision}: allowed: {", ".join(PRECISIONS)}')
    if cfg.train.device not in DEVICES:
        raise BadInput(f'train.device={cfg.train.device}: allowed: {", ".join(DEVICES)}')
    device, precision = choose_device_and_precision(cfg.train.device, cfg.train.precision)
    if cfg.wandb.mode not in ('auto', 'online', 'offline'):
        raise BadInput(f'wandb.mode={cfg.wandb.mode}: allowed: auto, online, offline')
    try:
        deadline = deadline_from_env()
    except ValueError:
        raise BadInput(f'SLMJOBS_DEADLINE={os.environ["SLMJOBS_DEADLINE"]!r}: must be epoch seconds') from None

    run_dir = Path(os.path.expanduser(str(cfg.run_dir))).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInput(f'run_dir={cfg.run_dir}: exists and is not a directory')
    return Plan(run_name=run_name, run_dir=run_dir, checkpoint_dir=run_dir / 'checkpoints',
                data_dir=data_dir, dataset=info, vocab_size=vocab_size, world_size=world_size,
                rank=rank, per_device_batch=per_device, microbatch=microbatch,
                eval_batches=eval_batches, deadline=deadline, device=device, precision=precision)


# ---------------------------------------------------------------------------------------------
# Pieces of the Trainer
# ---------------------------------------------------------------------------------------------

def choose_device_and_precision(device: str, precision: str) -> tuple[str, str]:
    """bf16 autocast on Ampere (compute capability 8.0) and newer, fp16 autocast with loss scaling
    on V100/Turing (7.x), fp32 on CPU (Composer requires it there)."""
    import torch
    if device == 'auto':
        device = 'gpu' if torch.cuda.is_available() else 'cpu'
    if device == 'gpu' and not torch.cuda.is_available():
        raise BadInput('train.device=gpu: no CUDA device visible; allowed here: cpu, auto')
    if precision == 'auto':
        if device == 'cpu':
            precision = 'fp32'
        else:
            precision = 'amp_bf16' if torch.cuda.get_device_capability()[0] >= 8 else 'amp_fp16'
    if device == 'cpu' and precision != 'fp32':
        raise BadInput(f'train.precision={precision}: on CPU only fp32 is allowed')
    return device, precision


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


def make_save_interval(every_batches: int, every_seconds: float):
    """Save when training ends or stops (hand-off), every N batches, and/or every S seconds of
    training wall-clock. The clock is Composer's total_wct, which rank 0 broadcasts, so all ranks
    take the same decision (a save is a collective)."""
    from composer.core import Event
    last = {'wct': None}

    def should_save(state, event) -> bool:
        if event != Event.BATCH_CHECKPOINT:
            return False
        wct = state.timestamp.total_wct.total_seconds()
        if last['wct'] is None:
            last['wct'] = wct
        step = int(state.timestamp.batch)
        due = state.get_elapsed_duration() >= 1.0
        due = due or (every_batches > 0 and step % every_batches == 0)
        due = due or (every_seconds > 0 and wct - last['wct'] >= every_seconds)
        if due:
            last['wct'] = wct
        return due

    return should_save


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints across links (Composer only rotates within one link).
    The one latest-rank0.pt points at is never removed."""
    if keep < 0:
        return
    import re
    pattern = re.compile(r'^ep\d+-ba(\d+)-rank0\.pt$')
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    latest = folder / 'latest-rank0.pt'
    protected = os.path.realpath(latest) if latest.exists() else None
    for _, path in found[:max(len(found) - keep, 0)]:
        if os.path.realpath(path) != protected:
            path.unlink(missing_ok=True)


def make_eval_interval(every: int, handoff):
    """Evaluate every N batches and at the end of training -- but not on a hand-off: the time
    before the deadline belongs to the checkpoint."""
    from composer.core import Event
    from composer.utils.misc import create_interval_scheduler
    inner = create_interval_scheduler(f'{every}ba' if every > 0 else '0ba', checkpoint_events=False,
                                      final_events={Event.FIT_END})

    def should_eval(state, event) -> bool:
        if handoff.stopped_early:
            return False
        if every <= 0:
            return event == Event.FIT_END and state.get_elapsed_duration() >= 1.0
        return inner(state, event)

    return should_eval


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def train(cfg, plan: Plan) -> int:
    from trainer.progress import Progress, eprint, fail_line

    rank_zero = plan.rank == 0
    if rank_zero:
        plan.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    use_wandb = bool(cfg.wandb.enabled)
    wandb_id = wandb_run_id(plan.run_dir) if (use_wandb and rank_zero) else None
    progress = Progress(plan.run_dir / 'progress.json', plan.run_name, int(cfg.train.max_steps),
                        plan.deadline, wandb_id, write=rank_zero)
    progress.write()  # state "starting": visible to `slmjobs status` during the imports
    try:
        code = _train(cfg, plan, progress, use_wandb, wandb_id)
    except BaseException as e:
        if not (isinstance(e, SystemExit) and e.code in (EXIT_FINISHED, EXIT_HANDED_OFF)):
            progress.update(state='failed')
            progress.write()
            if isinstance(e, BadInput):
                eprint(f'error: {e}')
                return EXIT_BAD_INPUT
            eprint(f'training failed: {fail_line(e)}')
        raise
    return code


def _train(cfg, plan: Plan, progress, use_wandb: bool, wandb_id: Optional[str]) -> int:
    from trainer.progress import say

    device_name, precision = plan.device, plan.precision
    import torch
    from composer import Trainer
    from composer.algorithms import GradientClipping
    from composer.core import DataSpec, Evaluator
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.optim import CosineAnnealingWithWarmupScheduler
    from composer.utils import dist, reproducibility

    from trainer.data import make_loader, tokens_in_batch
    from trainer.gpt import GPTConfig, make_composer_model
    from trainer.handoff import make_handoff_callback, make_save_timer
    from trainer.progress import make_progress_callback, on_checkpoint_saved

    device = DeviceGPU() if device_name == 'gpu' else DeviceCPU()
    dist.initialize_dist(device)
    rank_zero = dist.get_global_rank() == 0
    log = say if rank_zero else (lambda message: None)
    microbatch = plan.microbatch if not (plan.microbatch == 'auto' and device_name == 'cpu') else None

    train_dataset, train_loader = make_loader(
        plan.data_dir / 'train', plan.per_device_batch, shuffle=bool(cfg.data.shuffle),
        shuffle_seed=int(cfg.data.shuffle_seed), num_canonical_nodes=int(cfg.data.num_canonical_nodes),
        num_workers=int(cfg.data.num_workers), drop_last=True)
    train_spec = DataSpec(train_loader, get_num_tokens_in_batch=tokens_in_batch)
    evaluators = []
    if plan.eval_batches != 0:
        _, val_loader = make_loader(
            plan.data_dir / 'val', plan.per_device_batch, shuffle=False, shuffle_seed=0,
            num_canonical_nodes=int(cfg.data.num_canonical_nodes), num_workers=0, drop_last=False)
        evaluators.append((val_loader, plan.eval_batches))

    reproducibility.seed_all(int(cfg.seed))  # identical initial weights on every rank
    gpt_config = GPTConfig(vocab_size=plan.vocab_size, block_size=int(cfg.model.block_size),
                           n_layer=int(cfg.model.n_layer), n_head=int(cfg.model.n_head),
                           n_embd=int(cfg.model.n_embd), dropout=float(cfg.model.dropout),
                           bias=bool(cfg.model.bias))
    bytes_per_token = float(plan.dataset['bytes_per_token'])
    model = make_composer_model(gpt_config, bytes_per_token, train_metrics=bool(cfg.train.train_metrics))
    n_params = model.model.num_params()
    optimizer = torch.optim.AdamW(
        model.model.optimizer_groups(float(cfg.train.weight_decay)), lr=float(cfg.train.lr),
        betas=tuple(cfg.train.betas), eps=float(cfg.train.eps))
    scheduler = CosineAnnealingWithWarmupScheduler(t_warmup=f'{int(cfg.train.warmup_steps)}ba',
                                                   alpha_f=float(cfg.train.min_lr_ratio))

    save_guess = cfg.checkpoint.save_seconds_guess
    if save_guess is None:
        save_guess = 1.0 + n_params * 4 * 3 / SAVE_BYTES_PER_SECOND  # weights + two Adam moments
    handoff = make_handoff_callback(plan.deadline, float(save_guess), int(cfg.train.eval_every),
                                    eval_seconds_guess_per_batch=0.5 * (plan.eval_batches or 0))
    progress_cb = make_progress_callback(progress, int(cfg.train.log_every),
                                         float(cfg.train.progress_every_seconds), bytes_per_token,
                                         float(cfg.train.debug_batch_sleep),
                                         train_dataset if int(cfg.data.num_workers) == 0 else None)
    record_save = on_checkpoint_saved(progress)
    keep = int(cfg.checkpoint.keep)

    def saved(state, path, seconds):
        record_save(state, path, seconds)
        if rank_zero:
            prune_checkpoints(plan.checkpoint_dir, keep)

    save_timer = make_save_timer(handoff, saved)
    eval_interval = make_eval_interval(int(cfg.train.eval_every), handoff)
    eval_dataloader = [
        Evaluator(label='val', dataloader=DataSpec(loader, get_num_tokens_in_batch=tokens_in_batch),
                  metric_names=list(model.val_metrics), eval_interval=eval_interval,
                  subset_num_batches=batches if batches is not None else -1)
        for loader, batches in evaluators]

    loggers = []
    if use_wandb:
        mode = wandb_mode(str(cfg.wandb.mode))
        loggers.append(make_wandb_logger(
            project=str(cfg.wandb.project), entity=cfg.wandb.entity, name=plan.run_name,
            init_kwargs={'id': wandb_id, 'resume': 'allow', 'dir': str(plan.run_dir), 'mode': mode,
                         'config': _plain_config(cfg)}))

    log(f'run {plan.run_name}: model {cfg.model.name} ({n_params / 1e6:.2f}M parameters), '
        f'{plan.world_size} rank(s) on {device_name}, {precision}, global batch '
        f'{cfg.train.global_batch_size} x {plan.dataset["seq_len"]} tokens, {cfg.train.max_steps} steps')
    log(f'run dir {plan.run_dir}: checkpoints/ progress.json'
        + (f' wandb/ ({mode})' if use_wandb else ''))
    log(f'data {plan.data_dir} ({plan.dataset["tokenizer"]["kind"]} tokenizer, '
        f'{plan.dataset["bytes_per_token"]:.3f} bytes/token)')
    if plan.deadline is not None:
        log(f'deadline {time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(plan.deadline))} '
            f'(in {plan.deadline - time.time():.0f} s)')

    trainer = Trainer(
        run_name=plan.run_name,
        model=model,
        train_dataloader=train_spec,
        eval_dataloader=eval_dataloader or None,
        max_duration=f'{int(cfg.train.max_steps)}ba',
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        algorithms=[GradientClipping(clipping_type='norm', clipping_threshold=float(cfg.train.grad_clip))]
        if cfg.train.grad_clip else [],
        callbacks=[handoff, progress_cb],
        loggers=loggers,
        device=device,
        precision=precision,
        device_train_microbatch_size=microbatch,
        save_folder=str(plan.checkpoint_dir),
        save_filename='ep{epoch}-ba{batch}-rank{rank}.pt',
        save_latest_filename='latest-rank{rank}.pt',
        save_overwrite=True,  # a torn file newer than latest (kill during a save) must not block resume
        save_interval=make_save_interval(int(cfg.checkpoint.save_every_batches),
                                         float(cfg.checkpoint.save_every_seconds)),
        save_num_checkpoints_to_keep=-1,  # pruned across links by prune_checkpoints
        autoresume=True,
        seed=int(cfg.seed),
        log_to_console=False,
        progress_bar=False,
        compile_config={} if cfg.train.compile else None,
    )
    save_timer.saver = trainer._checkpoint_saver
    trainer.state.callbacks.append(save_timer)  # after the CheckpointSaver: times the save

    trainer.fit()
    step = int(trainer.state.timestamp.batch)
    max_steps = int(cfg.train.max_steps)
    handed_off = handoff.stopped_early and step < max_steps
    progress.update(state='handed_off' if handed_off else 'finished', step=step)
    progress.write()
    trainer.close()
    dist.barrier()  # every rank leaves together with the same status
    checkpoint = progress.data['checkpoint_path']
    if handed_off:
        log(f'handed off at step {step}/{max_steps} ({handoff.reason}); checkpoint {checkpoint}; '
            f'exit {EXIT_HANDED_OFF} (run again to continue)')
        return EXIT_HANDED_OFF
    log(f'finished: step {step}/{max_steps}; checkpoint {checkpoint}; run dir {plan.run_dir} '
        f'(progress.json' + (', wandb/: metrics, `wandb sync` uploads an offline run' if use_wandb else '') + ')')
    return EXIT_FINISHED


def make_wandb_logger(**kwargs):
    """Composer's WandBLogger, with two fixes for this stack:
    - Composer 0.32.1 (its last release) calls wandb.run.get_url(), which wandb 0.31 removed in
      favour of the `url` property: give the Run class the old method back if it lacks it.
    - On a run's first link Composer's autoresume asks every logger for a checkpoint to
      download, and WandBLogger tries the wandb API (an error without credentials, a stranger's
      artifact with them). Checkpoints live in run_dir only: say "not there".
    """
    from composer.loggers import WandBLogger
    from wandb.sdk.wandb_run import Run
    if not hasattr(Run, 'get_url'):
        Run.get_url = lambda self: self.url

    class LocalCheckpointsWandBLogger(WandBLogger):

        def download_file(self, remote_file_name, destination, overwrite=False, progress_bar=True):
            raise FileNotFoundError(f'{remote_file_name}: checkpoints are only read from run_dir')

    return LocalCheckpointsWandBLogger(**kwargs)


def _plain_config(cfg) -> dict:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

_task_started = False
_exit_code: Optional[int] = None


def _exit_without_finalizing() -> None:
    """Registered first, so it runs as the last atexit hook: Composer, wandb and streaming have
    closed and unlinked everything by then. What is left is the interpreter's teardown of torch,
    transformers and friends, measured at 4-8 s here -- time a hand-off before a deadline does
    not have. Skip it, with the status training decided."""
    if _exit_code is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_code)


def _task(cfg) -> None:
    global _task_started
    _task_started = True
    from trainer.progress import eprint
    try:
        plan = validate(cfg)
    except BadInput as e:
        eprint(f'error: {e}')
        sys.exit(EXIT_BAD_INPUT)
    global _exit_code
    code = train(cfg, plan)
    ignore_signals_for_exit()
    _exit_code = code
    sys.exit(code)


def main() -> None:
    os.environ.setdefault('HYDRA_FULL_ERROR', '1')  # whole tracebacks in job logs
    atexit.register(_exit_without_finalizing)
    install_signal_handlers()  # before any thread exists; a signal during start-up hands off at the first batch
    try:
        check_preset_overrides(sys.argv[1:])
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    import hydra
    entry = hydra.main(version_base=None, config_path=str(CONF_DIR), config_name='config')(_task)
    try:
        entry()
    except SystemExit as e:
        # Hydra exits 1 on a bad command line before our task runs.
        if e.code == 1 and not _task_started:
            sys.exit(EXIT_BAD_INPUT)
        raise
    except Exception as e:
        # A config that does not compose (unknown key, bad override value) is bad input too.
        if _task_started:
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'error: {first_line}', file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == '__main__':
    main()
