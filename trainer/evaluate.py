"""Score a run's checkpoint (or a Hugging Face model directory) on evaluation tasks.

    python -m trainer.evaluate RUN_DIR --tasks hellaswag [--data FILE] [--log-samples FILE]
                               [--checkpoint PATH | --all-kept] [--items K] [--device auto|cpu|cuda]
    python -m trainer.evaluate --hf-dir DIR --tasks hellaswag ...

hellaswag is scored by the native scorer (trainer/hellaswag.py: lm-eval's numbers, torch only);
any other task by lm-evaluation-harness (the `slmjobs[eval]` extra) on a temporary export of the
checkpoint, offline, its task files from --include-path (trainer/lmeval.py). Each result is one JSON line on stdout and, for a run,
one record appended to RUN_DIR/evals.jsonl per (task, checkpoint, scorer, items, data file): a result
already there is not scored again, and a killed evaluation wrote nothing (the record is one
append at the end). On N ranks (`torchrun --nproc_per_node N -m trainer.evaluate ...`) each scores
its share and rank 0 writes.

The data: --data FILE, else <data_root>/evals/hellaswag/hellaswag_val.jsonl as `slmjobs eval-data
fetch hellaswag` leaves it (data_root: $SLMJOBS_DATA_ROOT, else the run's run.yaml data_root,
else ./data). Exit status: 0, or 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from trainer.errors import EXIT_BAD_INPUT, BadInput, one_line_parser
from trainer.eval_data import hellaswag_file

EVALS_FILE = 'evals.jsonl'
NATIVE_TASKS = ('hellaswag',)
DEVICES = ('auto', 'cpu', 'cuda')


# ---------------------------------------------------------------------------------------------
# evals.jsonl: one record per (task, checkpoint, scorer, items, data), never twice
# ---------------------------------------------------------------------------------------------

def record_key(record: dict) -> tuple:
    """What makes two records the same score: a different data file is another score."""
    return (record.get('task'), record.get('checkpoint'), record.get('scorer'), record.get('items'),
            record.get('data'))


def read_records(path: Path) -> list[dict]:
    """The records of an evals.jsonl (a torn last line is skipped)."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def already_recorded(path: Path, key: tuple) -> bool:
    return any(record_key(r) == key for r in read_records(path))


def record_once(path: Path, record: dict) -> bool:
    """Append `record` unless one with its key is there (checked again under the lock, so two
    evaluations finishing together record it once). False when it was already there."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if already_recorded(path, record_key(record)):
            return False
        size = os.fstat(fd).st_size
        prefix = b'\n' if size and os.pread(fd, 1, size - 1) != b'\n' else b''  # a torn line stays apart
        os.write(fd, prefix + (json.dumps(record) + '\n').encode())
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# What is scored
# ---------------------------------------------------------------------------------------------

def eval_data_root(run_dir: Optional[Path]) -> Optional[Path]:
    """$SLMJOBS_DATA_ROOT, else the run's run.yaml data_root, else None (./data)."""
    if os.environ.get('SLMJOBS_DATA_ROOT') or run_dir is None or not (run_dir / 'run.yaml').is_file():
        return None
    import yaml
    root = (yaml.safe_load((run_dir / 'run.yaml').read_text()) or {}).get('data_root')
    return Path(root) if root else None


def choose_device(device: str) -> str:
    import torch
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise BadInput('--device cuda: no CUDA device visible; allowed here: cpu, auto')
        return f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}'
    return device


def start_ranks(device: str) -> None:
    """Join the process group torchrun (or composer -n) describes, if there is more than one rank."""
    import torch.distributed as dist
    if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.startswith('cuda') else 'gloo')


def is_rank_zero() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


def checkpoints_to_score(run_dir: Path, explicit: Optional[str], all_kept: bool) -> list[tuple[Path, Optional[int]]]:
    from trainer import checkpoints
    if all_kept:
        kept = [(p, checkpoints.step_of(p)) for p in checkpoints.candidates(run_dir / 'checkpoints')
                if checkpoints.why_damaged(p) is None]
        if not kept:
            checkpoints.for_run(run_dir)  # raises the one-line reason
        return sorted(kept, key=lambda c: c[1] or 0)
    path, step, skipped = checkpoints.for_run(run_dir, explicit)
    for bad, why in skipped:
        print(f'warning: skipped {bad.name}: {why}', file=sys.stderr)
    return [(path, step)]


def run_model(run_dir: Path, checkpoint: Path, device: str):
    """(LanguageModel, encode) for a run's checkpoint with the run's own tokenizer."""
    from trainer import checkpoints
    from trainer.hellaswag import gpt_language_model
    from trainer.run_inputs import load_tokenizer, model_config
    from trainer.sample import load_gpt
    tok, info = load_tokenizer(run_dir)
    gpt = load_gpt(model_config(run_dir), checkpoints.model_state(checkpoints.load(checkpoint))).to(device)
    return gpt_language_model(gpt, int(info['vocab_size']), device), \
        (lambda text: tok.encode(text, add_special_tokens=False).ids)


def hf_model(hf_dir: Path, device: str):
    """(LanguageModel, encode) for a Hugging Face causal LM directory (OpenAI's GPT-2, an export)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.hellaswag import LanguageModel
    if not (hf_dir / 'config.json').is_file():
        raise BadInput(f'--hf-dir {hf_dir}: no config.json; allowed: a Hugging Face model directory')
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    config = model.config
    block_size = next(getattr(config, k) for k in ('n_positions', 'max_position_embeddings', 'n_ctx')
                      if getattr(config, k, None))
    base = model.base_model
    lm = LanguageModel(lambda ids: base(ids).last_hidden_state, model.get_output_embeddings(),
                       len(tok), block_size, device)
    return lm, (lambda text: tok.encode(text, add_special_tokens=False))


def score_hellaswag(lm, encode, every: list, items: Optional[int], log_samples: Optional[Path],
                    batch_items: int) -> dict:
    from trainer import hellaswag
    started = time.time()
    results = hellaswag.score_items(lm, hellaswag.subset(every, items), encode, batch_items)
    if log_samples is not None and is_rank_zero():
        tmp = log_samples.with_name(f'.{log_samples.name}.tmp-{os.getpid()}')
        tmp.write_text(''.join(hellaswag.sample_line(r) for r in results))
        os.replace(tmp, log_samples)
    return {**hellaswag.summarize(results), 'seconds': round(time.time() - started, 3)}


def evaluate(args) -> list[dict]:
    """Score every (checkpoint, task) not yet in evals.jsonl; the records made, in order."""
    from trainer import hellaswag
    run_dir = Path(args.run_dir).expanduser().absolute() if args.run_dir else None
    hf_dir = Path(args.hf_dir).expanduser().absolute() if args.hf_dir else None
    if run_dir is not None and not run_dir.is_dir():
        raise BadInput(f'{args.run_dir}: no such run directory')
    tasks = list(dict.fromkeys(t for t in args.tasks.split(',') if t))
    items_of = {t: f'first {args.items}' if args.items else 'all' for t in tasks}  # lm-eval's --limit
    data = every = None
    if hellaswag.TASK in tasks:
        data = hellaswag_file(args.data and str(Path(args.data).expanduser().absolute()), eval_data_root(run_dir))
        every = hellaswag.read_items(data)
        items_of[hellaswag.TASK] = hellaswag.subset_name(args.items, len(every))
    device = choose_device(args.device)
    start_ranks(device)
    log_samples = Path(args.log_samples).expanduser().absolute() if args.log_samples else None
    targets = [(None, None)] if hf_dir is not None else checkpoints_to_score(run_dir, args.checkpoint, args.all_kept)
    evals = run_dir / EVALS_FILE if run_dir is not None else None

    records = []
    for checkpoint, step in targets:
        name = checkpoint.name if checkpoint is not None else str(hf_dir)
        # asked for its samples, hellaswag is scored again (its record is still kept once)
        todo = [t for t in tasks if evals is None or (t == hellaswag.TASK and log_samples) or not already_recorded(
            evals, (t, name, scorer_of(t), items_of[t], str(data) if t == hellaswag.TASK else None))]
        if hellaswag.TASK in todo:
            lm, encode = hf_model(hf_dir, device) if hf_dir else run_model(run_dir, checkpoint, device)
            scores = score_hellaswag(lm, encode, every, args.items, log_samples, args.batch_items)
            records.append(scored(hellaswag.TASK, items_of[hellaswag.TASK], name, step,
                                  {**scores, 'data': str(data)}))
        lm_eval_tasks = [t for t in todo if t not in NATIVE_TASKS]
        if lm_eval_tasks and is_rank_zero():  # lm-eval runs its own batches: one process does them
            from trainer import lmeval
            include = Path(args.include_path).expanduser().absolute() if args.include_path else None
            found = lmeval.evaluate(run_dir, checkpoint, hf_dir, lm_eval_tasks, device, args.items, include)
            records += [scored(task, items_of[task], name, step, scores) for task, scores in found.items()]
        for task in tasks:
            if task not in todo:
                print(f'{task} on {name}: already in {evals}, not scored again', file=sys.stderr)
    if evals is not None and is_rank_zero():
        for record in records:
            record_once(evals, record)
    return records


def scorer_of(task: str) -> str:
    return 'native' if task in NATIVE_TASKS else 'lm-eval'


def scored(task: str, items: str, checkpoint: str, step: Optional[int], scores: dict) -> dict:
    """An evals.jsonl record: what was scored, by which scorer, then the figures."""
    return {'task': task, 'scorer': scorer_of(task), 'checkpoint': checkpoint, 'step': step, 'items': items,
            **scores, 'time': time.time()}


def parse_args(argv):
    p = one_line_parser(prog='python -m trainer.evaluate', description=__doc__.split('\n\n')[0])
    p.add_argument('run_dir', nargs='?', help='the run directory (with checkpoints/)')
    p.add_argument('--hf-dir', default=None, help='a Hugging Face model directory instead of a run')
    p.add_argument('--tasks', default='hellaswag', help='comma-separated (default: hellaswag)')
    p.add_argument('--data', default=None, help='the HellaSwag jsonl file (default: the fetched copy)')
    p.add_argument('--log-samples', default=None, help='write one JSON line per item to this file')
    p.add_argument('--checkpoint', default=None, help='a checkpoint file (default: the newest intact one)')
    p.add_argument('--all-kept', action='store_true', help='every intact checkpoint the run kept')
    p.add_argument('--include-path', default=None, help='lm-eval task YAMLs (local data) for other tasks')
    p.add_argument('--items', type=int, default=None, help='score K items spread over the set (default: all)')
    p.add_argument('--batch-items', type=int, default=8, help='items per forward (4 rows each)')
    p.add_argument('--device', default='auto', help=f'one of: {", ".join(DEVICES)}')
    args = p.parse_args(argv)
    if (args.run_dir is None) == (args.hf_dir is None):
        raise BadInput('give a RUN_DIR or --hf-dir DIR (one of them)')
    if args.hf_dir is not None and (args.checkpoint or args.all_kept):
        raise BadInput('--checkpoint and --all-kept are for a run; --hf-dir scores the directory\'s model')
    if args.checkpoint and args.all_kept:
        raise BadInput('--checkpoint and --all-kept: give one of them')
    if not [t for t in args.tasks.split(',') if t]:
        raise BadInput(f'--tasks {args.tasks!r}: empty; allowed: hellaswag or lm-eval task names, comma-separated')
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise BadInput(f'--include-path {args.include_path}: no such directory; allowed: a folder of lm-eval task YAMLs')
    if args.items is not None and args.items < 1:
        raise BadInput(f'--items {args.items}: must be a positive integer')
    if args.batch_items < 1:
        raise BadInput(f'--batch-items {args.batch_items}: must be a positive integer')
    if args.device not in DEVICES:
        raise BadInput(f'--device {args.device}: allowed: {", ".join(DEVICES)}')
    return args


def main(argv=None) -> int:
    try:
        records = evaluate(parse_args(sys.argv[1:] if argv is None else argv))
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    if is_rank_zero():
        for record in records:
            print(json.dumps(record))
    return 0


if __name__ == '__main__':
    sys.exit(main())
