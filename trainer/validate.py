"""Can this configuration train? The checks, without torch, numpy or Composer.

    python -m trainer.validate [--ranks N] [--device cpu|gpu] [override ...]   # exit 0, or 2 + one line

`validate(config, world_size, device)` takes the composed configuration as a plain dict (what
`compose(overrides)` returns) and raises BadInput with one line naming the bad value and what is
allowed: unknown keys (with the closest allowed one), the dataset (present, finished), its
windows against the model's context, its vocabulary against the model's, the batch against the
ranks and the microbatch, the precision against the device where the device is known. It returns
the Plan: the values training derives from the configuration. The worker runs exactly these
checks at start (trainer.train); the launcher runs them in its own process (slmjobs.launch), a
sweep all its members at once (`validate_members`).

Importing it costs the standard library only (~0.02 s of CPU: benchmarks/bench_validate.py); the
checks read the allowed keys from the files in conf/ with PyYAML, and `compose` imports omegaconf
(~0.04 s) when called, hydra (~0.1 s more) only for what trainer.compose does not vouch for.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from trainer.compose import CONF_DIR, compose_quickly, compose_with_hydra
from trainer.dataset_format import (has_split, is_finished_dataset, read_dataset_info,
                                    resolve_dataset_path)
from trainer.errors import EXIT_BAD_INPUT, BadInput
from trainer.eval_data import hellaswag_file

GROUPS = ('model', 'data', 'train', 'checkpoint', 'wandb', 'eval')
TOP_LEVEL_KEYS = ('run_name', 'run_dir', 'seed')
PRECISIONS = ('auto', 'fp32', 'amp_fp16', 'amp_bf16')
DEVICES = ('auto', 'cpu', 'gpu')
WANDB_MODES = ('auto', 'online', 'offline')
BF16_CAPABILITY = 8.0  # bf16 tensor cores from Ampere (compute capability 8.0) on
EVAL_AFTER_TASK = re.compile(r'^[A-Za-z0-9_.-]+$')  # hellaswag, or an lm-eval task name


@dataclasses.dataclass(frozen=True)
class Plan:
    """A configuration that passed the checks, and what training derives from it."""
    config: dict
    run_name: str
    run_dir: Path
    data_dir: Path
    dataset: dict  # dataset.json
    vocab_size: int
    world_size: int
    per_device_batch: int
    microbatch: Any  # None, 'auto' or a positive int
    eval_batches: Optional[int]  # 0 = no evaluation (no val split), None = the whole split
    device: Optional[str]  # 'cpu' | 'gpu'; None where the device is not known (a login node)
    precision: Optional[str]  # resolved where the device is known
    hellaswag_data: Optional[Path] = None  # the items eval.every scores (None: eval.every=0)
    rank: int = 0  # the worker's own, filled in by trainer.train
    deadline: Optional[float] = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / 'checkpoints'


# ---------------------------------------------------------------------------------------------
# The configuration's keys: whatever the files in conf/ define
# ---------------------------------------------------------------------------------------------

def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / 'model').glob('*.yaml'))


@lru_cache(maxsize=1)
def allowed_keys() -> dict[str, tuple[str, ...]]:
    """Group -> its keys ('' -> the top level): the group defaults plus what the model presets
    set (a preset also sets its recipe's train.* keys, all of which train/default.yaml has)."""
    import yaml
    loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)  # libyaml's: a quarter of the time
    keys: dict[str, set[str]] = {'': set(TOP_LEVEL_KEYS) | set(GROUPS)}
    for group in GROUPS:
        default = CONF_DIR / group / 'default.yaml'
        keys[group] = set(yaml.load(default.read_text(), loader) or {}) if default.is_file() else set()
    for preset in (CONF_DIR / 'model').glob('*.yaml'):
        keys['model'] |= set(yaml.load(preset.read_text(), loader)['model'])
    return {group: tuple(sorted(names)) for group, names in keys.items()}


def unknown_key_message(group: str, key: str) -> str:
    allowed = allowed_keys()[group]
    name = f'{group}.{key}' if group else key
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f'did you mean {group + "." if group else ""}{close[0]}? ' if close else ''
    return f'{name}: unknown key; {hint}allowed{" in " + group if group else ""}: {", ".join(allowed)}'


def check_key_path(path: str) -> None:
    """A dotted key as an override names it (train.max_steps), checked against allowed_keys()."""
    group, _, key = path.partition('.')
    if not key:
        if group not in allowed_keys()['']:
            raise BadInput(unknown_key_message('', group))
    elif group not in GROUPS:
        raise BadInput(unknown_key_message('', group))
    elif key.split('.')[0] not in allowed_keys()[group]:
        raise BadInput(unknown_key_message(group, key.split('.')[0]))


def check_overrides(overrides: list[str]) -> None:
    """Before hydra: its errors for a mistyped key or preset are several lines and exit 1."""
    for arg in overrides:
        if arg.startswith('-'):
            raise BadInput(f'{arg}: not an override; allowed: key=value (hydra syntax, e.g. '
                           f'train.max_steps=100); print a configuration with python -m trainer.validate')
        key, equals, value = arg.lstrip('+~').partition('=')
        if not equals and not arg.startswith('~'):
            raise BadInput(f'{arg}: not an override; allowed: key=value, e.g. model=gpt2')
        if key.startswith('hydra.') or key.startswith('hydra/'):
            continue
        if key == 'model' and value not in model_presets():
            raise BadInput(f'model={value}: unknown preset; allowed: {", ".join(model_presets())}')
        check_key_path(key)


def compose(overrides: list[str]) -> dict:
    """trainer/conf composed with these overrides, as plain data (interpolations resolved): hydra's
    result, without importing hydra where trainer.compose can vouch for it (every preset and
    override form the launcher passes), else from hydra itself, whose errors become one line."""
    check_overrides(overrides)
    config = compose_quickly(overrides)
    if config is not None:
        return config
    try:
        return compose_with_hydra(overrides)
    except Exception as e:  # hydra's and omegaconf's: an override that does not parse or fit
        lines = str(e).strip().splitlines()
        said = lines[0] if lines else type(e).__name__
        bad = unparsable_override(overrides)
        if bad is not None:
            raise BadInput(f'{bad}: not a hydra override ({said}); allowed: key=value, with '
                           "a value of special characters quoted (key='...')") from None
        raise BadInput(said) from None


def unparsable_override(overrides: list[str]) -> Optional[str]:
    """The first override hydra's grammar cannot parse on its own, if one is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except Exception:
            return override
    return None


# ---------------------------------------------------------------------------------------------
# The checks, in the order training needs the values
# ---------------------------------------------------------------------------------------------

def validate(config: dict, world_size: int = 1, device: Optional[str] = None,
             gpu_capability: Optional[float] = None, data_root: Optional[Path] = None,
             workdir: Optional[Path] = None) -> Plan:
    """`device`: 'cpu' or 'gpu' where it is known (the worker), None where not (a login node);
    `gpu_capability`: the GPU's compute capability (8.0 = A100), where known; `workdir`: the
    directory the job starts in, which relative paths are taken from (None: this process's)."""
    check_keys(config)
    model, train = config['model'], config['train']
    run_name = check_run_name(config['run_name'])
    check_numbers(config)

    data_dir = resolve_dataset_path(str(config['data']['path']), data_root, workdir)
    dataset = check_dataset(config['data']['path'], data_dir)
    block_size = model['block_size']
    if dataset['seq_len'] > block_size:
        raise BadInput(f'data.path={config["data"]["path"]}: windows of {dataset["seq_len"]} tokens are longer '
                       f'than model.block_size={block_size}; allowed: seq_len <= block_size (re-prepare '
                       f'with --seq-len {block_size}, or raise model.block_size)')
    vocab_size = check_vocabulary(model['vocab_size'], dataset['tokenizer'])

    per_device_batch, microbatch = check_batch(train['global_batch_size'], train['microbatch_size'], world_size)
    train_windows = dataset['splits']['train']['windows']
    if train_windows < train['global_batch_size']:
        raise BadInput(f'data.path={config["data"]["path"]}: {train_windows} training windows, fewer than '
                       f'train.global_batch_size={train["global_batch_size"]}')
    eval_batches = train['eval_batches'] if has_split(data_dir, 'val') else 0

    device, precision = check_device_and_precision(train['device'], train['precision'], device, gpu_capability)
    if config['wandb']['mode'] not in WANDB_MODES:
        raise BadInput(f'wandb.mode={config["wandb"]["mode"]}: allowed: {", ".join(WANDB_MODES)}')
    run_dir = (Path(workdir or '') / Path(str(config['run_dir'])).expanduser()).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInput(f'run_dir={config["run_dir"]}: exists and is not a directory')
    hellaswag_data = None
    if config['eval']['every'] or 'hellaswag' in config['eval']['after']:  # refused now, not after a queue wait
        hellaswag_data = hellaswag_file(config['eval']['data'], data_root, name='eval.data=')
    return Plan(config=config, run_name=run_name, run_dir=run_dir, data_dir=data_dir, dataset=dataset,
                vocab_size=vocab_size, world_size=world_size, per_device_batch=per_device_batch,
                microbatch=microbatch, eval_batches=eval_batches, device=device, precision=precision,
                hellaswag_data=hellaswag_data if config['eval']['every'] else None)


def check_keys(config: dict) -> None:
    """Only keys conf/ defines: a `+train.max_stepz=1` would otherwise be silently ignored."""
    allowed = allowed_keys()
    for key in config:
        if key not in allowed['']:
            raise BadInput(unknown_key_message('', key))
    for group in GROUPS:
        if not isinstance(config.get(group), dict):
            raise BadInput(f'{group}: missing or not a group; allowed: a group of {", ".join(allowed[group])}')
        for key in config[group]:
            if key not in allowed[group]:
                raise BadInput(unknown_key_message(group, key))


def check_run_name(run_name) -> str:
    run_name = str(run_name)
    if not run_name or any(c in run_name for c in '/ \t\n') or run_name.startswith('.'):
        raise BadInput(f'run_name={run_name!r}: must be non-empty, without "/" or spaces, not starting with "."')
    return run_name


def _positive_int(name: str, value, allow_zero: bool = False, minimum: Optional[int] = None) -> int:
    low = minimum if minimum is not None else (0 if allow_zero else 1)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        what = {0: 'a non-negative integer', 1: 'a positive integer'}.get(low, f'an integer >= {low}')
        raise BadInput(f'{name}={value}: must be {what}')
    return value


def _number(name: str, value, low: float = 0.0, high: Optional[float] = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value >= high):
        allowed = f'a number >= {low:g}' + (f' and < {high:g}' if high is not None else '')
        raise BadInput(f'{name}={value}: must be {allowed}')
    return float(value)


def _boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f'{name}={value}: allowed: true, false')
    return value


def check_numbers(config: dict) -> None:
    """Every value training turns into a number or a flag, so none fails half-way through start-up."""
    model, train, data, checkpoint = config['model'], config['train'], config['data'], config['checkpoint']
    _positive_int('seed', config['seed'], allow_zero=True)
    for key in ('n_layer', 'n_head', 'n_embd', 'block_size'):
        _positive_int(f'model.{key}', model[key])
    if model['n_embd'] % model['n_head']:
        raise BadInput(f'model.n_embd={model["n_embd"]}: must be divisible by model.n_head={model["n_head"]}')
    _number('model.dropout', model['dropout'], high=1.0)
    _boolean('model.bias', model['bias'])
    for key in ('max_steps', 'global_batch_size', 'log_every'):
        _positive_int(f'train.{key}', train[key])
    for key in ('warmup_steps', 'eval_every'):
        _positive_int(f'train.{key}', train[key], allow_zero=True)
    if train['eval_batches'] is not None:
        _positive_int('train.eval_batches', train['eval_batches'])
    for key in ('lr', 'min_lr_ratio', 'weight_decay', 'eps', 'grad_clip', 'progress_every_seconds',
                'debug_batch_sleep'):
        _number(f'train.{key}', train[key])
    betas = train['betas']
    if not (isinstance(betas, list) and len(betas) == 2):
        raise BadInput(f'train.betas={betas}: must be two numbers in [0, 1), e.g. [0.9,0.95]')
    for beta in betas:
        _number('train.betas', beta, high=1.0)
    for key in ('compile', 'train_metrics'):
        _boolean(f'train.{key}', train[key])
    _boolean('data.shuffle', data['shuffle'])
    _positive_int('data.num_workers', data['num_workers'], allow_zero=True)
    _positive_int('data.shuffle_seed', data['shuffle_seed'], allow_zero=True)
    _positive_int('data.num_canonical_nodes', data['num_canonical_nodes'])
    _positive_int('checkpoint.save_every_batches', checkpoint['save_every_batches'], allow_zero=True)
    _number('checkpoint.save_every_seconds', checkpoint['save_every_seconds'])
    keep = _positive_int('checkpoint.keep', checkpoint['keep'], minimum=-1)
    if keep in (0, 1):  # the chain falls back to an older checkpoint when the newest is damaged
        raise BadInput(f'checkpoint.keep={keep}: allowed: 2 or more (an intact older checkpoint '
                       'to resume from when the newest is damaged), or -1 for all')
    if checkpoint['save_seconds_guess'] is not None:
        _number('checkpoint.save_seconds_guess', checkpoint['save_seconds_guess'])
    _boolean('wandb.enabled', config['wandb']['enabled'])
    check_eval(config['eval'])


def check_eval(evaluation: dict) -> None:
    _positive_int('eval.every', evaluation['every'], allow_zero=True)
    if evaluation['items'] is not None:
        _positive_int('eval.items', evaluation['items'])
    _positive_int('eval.batch_items', evaluation['batch_items'])
    if evaluation['seconds_guess'] is not None:
        _number('eval.seconds_guess', evaluation['seconds_guess'])
    after = evaluation['after']
    if not (isinstance(after, list) and all(isinstance(t, str) and EVAL_AFTER_TASK.match(t) for t in after)):
        raise BadInput(f'eval.after={after}: allowed: a list of task names, e.g. [hellaswag] or '
                       f'[hellaswag,arc_easy]')


def check_dataset(configured_path, data_dir: Path) -> dict:
    if not is_finished_dataset(data_dir) or not has_split(data_dir, 'train'):
        raise BadInput(f'data.path={configured_path}: no prepared dataset (shards) at {data_dir}; '
                       f'create one with: python -m trainer.prepare --source builtin --out {data_dir}')
    return read_dataset_info(data_dir)


def check_vocabulary(configured, tokenizer: dict) -> int:
    """The model's vocabulary: the dataset's when not configured, never smaller than it."""
    data_vocab = int(tokenizer['vocab_size'])
    if configured is None:
        return data_vocab
    vocab_size = _positive_int('model.vocab_size', configured)
    if data_vocab > vocab_size:
        raise BadInput(f'model.vocab_size={vocab_size}: smaller than the dataset tokenizer\'s vocabulary '
                       f'({tokenizer["kind"]}, {data_vocab} ids); allowed: >= {data_vocab}, or null')
    return vocab_size


def check_batch(global_batch: int, microbatch, world_size: int) -> tuple[int, Any]:
    """The per-rank batch and the microbatch that must divide it."""
    _positive_int('world size (ranks)', world_size)
    if global_batch % world_size:
        raise BadInput(f'train.global_batch_size={global_batch}: not divisible by the {world_size} ranks; '
                       f'allowed: a multiple of {world_size}')
    per_device = global_batch // world_size
    if microbatch not in (None, 'auto'):
        _positive_int('train.microbatch_size', microbatch)
        if per_device % microbatch:
            raise BadInput(f'train.microbatch_size={microbatch}: must divide the per-rank batch {per_device} '
                           f'(train.global_batch_size={global_batch} over {world_size} rank(s)); '
                           f'allowed: a divisor of {per_device}, null or auto')
    return per_device, microbatch


def check_device_and_precision(requested_device: str, precision: str, device: Optional[str],
                               gpu_capability: Optional[float]) -> tuple[Optional[str], Optional[str]]:
    """bf16 autocast on Ampere (compute capability 8.0) and newer, fp16 autocast with loss
    scaling on V100/Turing (7.x), fp32 on CPU (Composer requires it there). What cannot be known
    here (the device of a job not yet running) stays None, and precision 'auto' unresolved."""
    if requested_device not in DEVICES:
        raise BadInput(f'train.device={requested_device}: allowed: {", ".join(DEVICES)}')
    if precision not in PRECISIONS:
        raise BadInput(f'train.precision={precision}: allowed: {", ".join(PRECISIONS)}')
    if requested_device == 'gpu' and device == 'cpu':
        raise BadInput('train.device=gpu: no CUDA device visible; allowed here: cpu, auto')
    if requested_device != 'auto':
        device = requested_device
    if device == 'cpu':
        if precision not in ('auto', 'fp32'):
            raise BadInput(f'train.precision={precision}: on CPU only fp32 is allowed')
        return device, 'fp32'
    if gpu_capability is not None:
        if precision == 'auto':
            precision = 'amp_bf16' if gpu_capability >= BF16_CAPABILITY else 'amp_fp16'
        if precision == 'amp_bf16' and gpu_capability < BF16_CAPABILITY:
            raise BadInput(f'train.precision=amp_bf16: this GPU (compute capability {gpu_capability:g}) '
                           f'has no bf16; allowed: amp_fp16, fp32, auto')
    return device, None if precision == 'auto' else precision


def validate_members(override_lists: list[list[str]], world_size: int = 1, device: Optional[str] = None,
                     data_root: Optional[Path] = None, workdir: Optional[Path] = None) -> list[Plan]:
    """compose + validate each member of a sweep, all in this one process: the start-up (the
    interpreter, omegaconf, hydra where needed) is paid once, not once per member. The plans in
    order, or BadInput for the first member that cannot train: `member 2 of 4 (overrides): ...`."""
    plans = []
    for number, overrides in enumerate(override_lists, 1):
        try:
            plans.append(validate(compose(list(overrides)), world_size, device, data_root=data_root,
                                  workdir=workdir))
        except BadInput as e:
            raise BadInput(f'member {number} of {len(override_lists)} ({" ".join(overrides)}): {e}') from None
    return plans


# ---------------------------------------------------------------------------------------------
# python -m trainer.validate
# ---------------------------------------------------------------------------------------------

def summary(plan: Plan) -> dict:
    """The plan as JSON-able data (the configuration included)."""
    data = dataclasses.asdict(plan)
    return {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = {'--ranks': '1', '--device': None}
    while args and args[0] in options:
        if len(args) < 2:
            print(f'error: {args[0]} needs a value', file=sys.stderr)
            return EXIT_BAD_INPUT
        option, value = args.pop(0), args.pop(0)
        options[option] = value
    try:
        if not options['--ranks'].isdigit():
            raise BadInput(f'--ranks {options["--ranks"]}: must be a positive integer')
        if options['--device'] not in (None, 'cpu', 'gpu'):
            raise BadInput(f'--device {options["--device"]}: allowed: cpu, gpu')
        plan = validate(compose(args), world_size=int(options['--ranks']), device=options['--device'])
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary(plan), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
