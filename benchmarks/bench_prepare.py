"""Data-preparation throughput on the built-in offline corpus (~5 MB of text).

    .venv/bin/python benchmarks/bench_prepare.py [--tokenizers bytes bpe-builtin]

For each tokenizer: one fresh `python -m trainer.prepare --source builtin` process; prints its
summary line, i.e. documents, tokens, shards, the tokens/s of tokenizing + writing shards, and the
whole command's wall time (which includes ~8 s of imports, and the BPE training for bpe-builtin).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--tokenizers', nargs='+', default=['bytes', 'bpe-builtin'])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix='bench-prepare-') as tmp:
        for tok in args.tokenizers:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, '-m', 'trainer.prepare', '--source', 'builtin',
                                  '--tokenizer', tok, '--out', str(Path(tmp) / tok)],
                                 capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
            wall = time.perf_counter() - started
            if out.returncode != 0:
                sys.exit(f'prepare --tokenizer {tok} failed:\n{out.stderr[-2000:]}')
            print(f'{tok:12s} wall {wall:5.1f} s | {out.stdout.strip()}', flush=True)


if __name__ == '__main__':
    main()
