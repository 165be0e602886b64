"""Time and peak memory of `python -m trainer.export` on a gpt2-xl checkpoint with optimizer state.

    .venv/bin/python benchmarks/bench_export.py [--preset gpt2-xl] [--sample] [--scratch DIR] [--keep]

Builds a run directory the way the worker leaves it (model.json, tokenizer/ with a GPT-2-sized
50257-id tokenizer, checkpoints/ep0-ba1-rank0.pt in Composer's layout: the model's weights and
AdamW's two moments per parameter, ~19 GB for gpt2-xl) without ever holding it in memory: every
tensor is file-backed (torch.from_file(shared=True)), weights random N(0, 0.02), moments zero.
Then it runs the real export in a fresh process, samples that process's /proc/PID/status every
0.1 s (VmRSS, RssAnon, RssFile) and reports the peaks with the wall time, checks one transposed
tensor of the result against the checkpoint, and deletes everything (unless --keep). With
--sample, the same for `python -m trainer.sample` (8 new tokens on the CPU) on that checkpoint.

RssFile counts the shared libraries (~0.3 GB of torch) and the checkpoint's memory-mapped pages
the export is reading (weights only, never the optimizer state; each tensor's pages are handed
back once written). RssAnon is what the export itself allocates. The checkpoint was just written, so much of it may still be in the page cache:
the export's time is for a warm cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests' / 'trainer'))  # offline_tokenizers

GB = 1e9


def mem_available() -> float:
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemAvailable:'):
            return int(line.split()[1]) * 1024
    return 0.0


def model_config(preset: str) -> dict:
    import yaml
    model = yaml.safe_load((REPO / 'trainer' / 'conf' / 'model' / f'{preset}.yaml').read_text())['model']
    return {k: model[k] for k in ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')}


def build_run(run_dir: Path, preset: str, backing: Path) -> float:
    """The run directory; returns the checkpoint's size in bytes."""
    import torch

    from offline_tokenizers import gpt2_sized_tokenizer
    from trainer.gpt import GPT, GPTConfig
    cfg = model_config(preset)
    (run_dir / 'checkpoints').mkdir(parents=True)
    (run_dir / 'tokenizer').mkdir()
    (run_dir / 'model.json').write_text(json.dumps({'preset': preset, **cfg}))
    gpt2_sized_tokenizer().save(str(run_dir / 'tokenizer' / 'tokenizer.json'))
    (run_dir / 'tokenizer' / 'dataset.json').write_text(json.dumps(
        {'tokenizer': {'kind': 'gpt2', 'vocab_size': 50257, 'eos_id': 50256}}))

    with torch.device('meta'):
        shapes = GPT(GPTConfig(**cfg))  # names and shapes only; tied head = the same Parameter
    backing.mkdir(parents=True)
    made = {}

    def file_tensor(shape, fill: bool):
        path = backing / f'{len(made)}.bin'
        made[path] = True
        numel = 1
        for n in shape:
            numel *= n
        t = torch.from_file(str(path), shared=True, size=numel, dtype=torch.float32).view(shape)
        if fill:
            t.normal_(0.0, 0.02)  # pages written back to the file, not kept
        return t

    weights, by_param, optim_state = {}, {}, {}
    for name, p in shapes.named_parameters(remove_duplicate=False):
        if id(p) not in by_param:
            by_param[id(p)] = file_tensor(p.shape, fill=True)
            optim_state[name] = {'step': torch.tensor(1.0), 'exp_avg': file_tensor(p.shape, fill=False),
                                 'exp_avg_sq': file_tensor(p.shape, fill=False)}
        weights[f'model.{name}'] = by_param[id(p)]
    state = {'state': {
        'model': weights,
        'optimizers': {'AdamW': {'state': optim_state, 'param_groups': [
            {'lr': 2e-4, 'betas': (0.9, 0.95), 'eps': 1e-8, 'weight_decay': 0.1, 'params': sorted(optim_state)}]}},
        'timestamp': {'Timestamp': {'batch': 1}}, 'run_name': 'bench-export'}, 'rng': []}
    path = run_dir / 'checkpoints' / 'ep0-ba1-rank0.pt'
    torch.save(state, path)
    os.symlink(path.name, run_dir / 'checkpoints' / 'latest-rank0.pt')
    del state, weights, by_param, optim_state
    shutil.rmtree(backing)
    return path.stat().st_size


def status_kb(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'RssAnon', 'RssFile'):
                out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


# `python -m MODULE ...` that also leaves its own VmHWM (peak RSS) in a file at exit. Not
# RUSAGE_CHILDREN's ru_maxrss: that counts the child while it was still a fork of this process.
REPORTING_PEAK = """
import atexit, runpy, sys
from pathlib import Path
hwm_file, module = sys.argv.pop(1), sys.argv.pop(1)
atexit.register(lambda: Path(hwm_file).write_text(
    [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')][0]))
sys.argv[0] = module
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def run_measured(module: str, *args: str) -> tuple[float, dict, str]:
    """Wall seconds, memory peaks (kB) and output of `python -m MODULE ARGS`."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    hwm_file = Path(tempfile.mkstemp(prefix='vmhwm-')[1])
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, '-c', REPORTING_PEAK, str(hwm_file), module, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {'VmRSS': 0, 'RssAnon': 0, 'RssFile': 0}

    def watch():
        while proc.poll() is None:
            for k, v in status_kb(proc.pid).items():
                peaks[k] = max(peaks[k], v)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    seconds = time.perf_counter() - started
    watcher.join()
    if proc.returncode != 0:
        sys.exit(f'{module} failed ({proc.returncode}):\n{output}')
    peaks['VmHWM'] = int(hwm_file.read_text().split()[1])
    hwm_file.unlink()
    return seconds, peaks, output.strip()


def peaks_line(peaks: dict) -> str:
    return (f'peak RSS (VmHWM) {peaks["VmHWM"] / 1e6:.2f} GB (sampled every 0.1 s: VmRSS {peaks["VmRSS"] / 1e6:.2f} GB'
            f' = anonymous {peaks["RssAnon"] / 1e6:.2f} GB + file-backed {peaks["RssFile"] / 1e6:.2f} GB)')


def check_one_tensor(run_dir: Path, out: Path) -> None:
    import torch
    from safetensors import safe_open

    from trainer import checkpoints
    weights = checkpoints.model_state(checkpoints.load(run_dir / 'checkpoints' / 'latest-rank0.pt'))
    with safe_open(str(out / 'model.safetensors'), framework='pt') as f:
        got = f.get_tensor('transformer.h.0.mlp.c_fc.weight')
        wte = f.get_slice('transformer.wte.weight').get_shape()
    assert torch.equal(got, weights['transformer.h.0.mlp.c_fc.weight'].t()), 'c_fc differs'
    assert wte[0] == 50257, wte


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--preset', default='gpt2-xl')
    p.add_argument('--scratch', default=None, help='where to build (default: a new temporary directory)')
    p.add_argument('--keep', action='store_true', help='keep the checkpoint and the export')
    p.add_argument('--sample', action='store_true', help='also time `trainer.sample` on the same checkpoint')
    args = p.parse_args()

    params = {'gpt2': 124e6, 'gpt2-medium': 355e6, 'gpt2-large': 774e6, 'gpt2-xl': 1558e6}[args.preset]
    need_disk = params * 4 * 3 * 1.4  # checkpoint + the export's copy of the weights + backing files
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix='bench-export-'))
    scratch.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(scratch).free
    print(f'{args.preset}: ~{params / 1e9:.2f}B parameters; memory available {mem_available() / GB:.1f} GB, '
          f'disk free at {scratch}: {free_disk / GB:.0f} GB (need ~{need_disk / GB:.0f}); '
          f'load {os.getloadavg()[0]:.2f}', flush=True)
    if free_disk < need_disk:
        sys.exit(f'not enough disk at {scratch}')
    run_dir, out = scratch / 'run', scratch / 'hf'
    try:
        t0 = time.perf_counter()
        size = build_run(run_dir, args.preset, scratch / 'backing')
        print(f'built the checkpoint: {size / GB:.1f} GB in {time.perf_counter() - t0:.0f} s', flush=True)
        seconds, peaks, line = run_measured('trainer.export', str(run_dir), '--out', str(out))
        check_one_tensor(run_dir, out)
        exported = sum(f.stat().st_size for f in out.iterdir())
        print(line)
        print(f'export: {seconds:.1f} s wall, {exported / GB:.2f} GB written; {peaks_line(peaks)}; '
              f'checkpoint {size / GB:.1f} GB; load {os.getloadavg()[0]:.2f}', flush=True)
        if args.sample:
            seconds, peaks, _ = run_measured('trainer.sample', str(run_dir), '--max-new-tokens', '8',
                                             '--device', 'cpu')
            print(f'sample (8 new tokens, CPU, weights mapped from the checkpoint): {seconds:.1f} s wall; '
                  f'{peaks_line(peaks)}; load {os.getloadavg()[0]:.2f}')
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    main()
