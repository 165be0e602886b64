#!/usr/bin/env bash
# Create .venv with slmjobs and its training stack (about 4 minutes and 6.6 GB the first time).
# Usage: bash scripts/setup.sh [--dev]      (--dev adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A fresh Debian has python3 but not always its venv module.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -m pip check

# GPT-2's BPE vocabulary, so `--tokenizer gpt2` works offline (trainer/tokenizer.py GPT2_VOCAB):
# the file tiktoken would download (r50k_base), as shipped in the openai-whisper sdist on PyPI.
gpt2_vocab=.venv/share/slmjobs/gpt2.tiktoken
gpt2_sha256=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930
if ! echo "$gpt2_sha256  $gpt2_vocab" | sha256sum --check --status 2>/dev/null; then
    tmp=$(mktemp -d)
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: openai-whisper==20250625 -d "$tmp"
    tar -xzf "$tmp"/openai_whisper-20250625.tar.gz -C "$tmp" openai_whisper-20250625/whisper/assets/gpt2.tiktoken
    mkdir -p "$(dirname "$gpt2_vocab")"
    mv "$tmp"/openai_whisper-20250625/whisper/assets/gpt2.tiktoken "$gpt2_vocab"
    rm -rf "$tmp"
    echo "$gpt2_sha256  $gpt2_vocab" | sha256sum --check --status
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, composer, streaming; print("torch", torch.__version__, "composer", composer.__version__, "streaming", streaming.__version__)'))"
