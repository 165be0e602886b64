"""Export a run's checkpoint as a Hugging Face GPT-2 model directory (after llm-foundry's
Composer-to-Hugging-Face converter).

    python -m trainer.export RUN_DIR --out DIR [--checkpoint PATH] [--force]

DIR then holds config.json (GPT2Config), model.safetensors, generation_config.json and the run's
tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json), so that
`AutoModelForCausalLM.from_pretrained(DIR)`, `AutoTokenizer.from_pretrained(DIR)` and
`pipeline("text-generation", model=DIR)` work with transformers alone. trainer/gpt.py is GPT-2's
architecture, so the conversion is a renaming and a transpose: transformers' GPT-2 keeps its
projections as Conv1D, weights stored (in, out) where nn.Linear stores (out, in). The padded
vocabulary rows (50304 -> 50257) are dropped: the export has exactly the tokenizer's ids.

Memory: the checkpoint is memory-mapped and tensors are written one at a time, each one's pages
handed back to the kernel once written, so optimizer state is never read and resident memory stays
near one tensor whatever the model's size (gpt2-xl: benchmarks/bench_export.py).
DIR is built beside itself and renamed into place: a failed export leaves nothing behind, and an
existing DIR is only replaced with --force.

Exit status: 0; 2 for bad input; 74 when DIR's filesystem is full (or the quota spent), 73 when
it is read-only or DIR may not be written there. One line on stderr each; nothing left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

from trainer.errors import EXIT_BAD_INPUT, BadInput, one_line_parser
from trainer.failures import filesystem_failure
from trainer.files import parents_made_for, replace_directory

# trainer.gpt.GPT Linear weights that transformers' GPT-2 keeps as Conv1D, i.e. transposed.
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
SAFETENSORS_DTYPES = {'torch.float32': 'F32', 'torch.float16': 'F16', 'torch.bfloat16': 'BF16'}


def expected_keys(n_layer: int) -> set[str]:
    block = ['ln_1.weight', 'ln_1.bias', 'attn.c_attn.weight', 'attn.c_attn.bias', 'attn.c_proj.weight',
             'attn.c_proj.bias', 'ln_2.weight', 'ln_2.bias', 'mlp.c_fc.weight', 'mlp.c_fc.bias',
             'mlp.c_proj.weight', 'mlp.c_proj.bias']
    keys = {f'transformer.h.{i}.{name}' for i in range(n_layer) for name in block}
    return keys | {'transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight',
                   'transformer.ln_f.bias', 'lm_head.weight'}


def _same_tensor(a, b) -> bool:
    """Tied weights share one storage in the checkpoint (torch.save keeps the sharing)."""
    import torch
    if a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and \
            a.storage_offset() == b.storage_offset() and a.shape == b.shape:
        return True
    return a.shape == b.shape and bool(torch.equal(a, b))


def check_expressible(model_cfg: dict, weights: dict, vocab_size: int) -> None:
    """Refuse, with one line, what GPT2Config cannot say."""
    if not model_cfg['bias']:
        raise BadInput('model.bias=false: GPT2Config has biases in every Linear and LayerNorm; '
                       'allowed for export: model.bias=true')
    unexpected = sorted(set(weights) ^ expected_keys(model_cfg['n_layer']))
    if unexpected:
        raise BadInput(f'checkpoint weights {", ".join(unexpected[:3])}{" ..." if len(unexpected) > 3 else ""} '
                       f'do not match GPT-2\'s layout; allowed: trainer.gpt.GPT as trained by trainer.train')
    if not _same_tensor(weights['lm_head.weight'], weights['transformer.wte.weight']):
        raise BadInput('lm_head.weight is not tied to transformer.wte.weight; GPT2Config ties them; '
                       'allowed for export: a tied output head')
    rows = weights['transformer.wte.weight'].shape[0]
    if vocab_size > rows:
        raise BadInput(f'tokenizer has {vocab_size} ids but the model only {rows} embedding rows; '
                       f'allowed: a tokenizer no larger than model.vocab_size')
    for name, tensor in weights.items():
        if str(tensor.dtype) not in SAFETENSORS_DTYPES:
            raise BadInput(f'{name}: dtype {tensor.dtype}; allowed: {", ".join(SAFETENSORS_DTYPES)}')


def hf_weights(weights: dict, vocab_size: int) -> dict:
    """transformers GPT2LMHeadModel names -> views of the checkpoint's tensors (no copies yet).
    lm_head.weight is left out: transformers ties it to wte, as trainer.gpt does."""
    out = {}
    for name, tensor in weights.items():
        if name == 'lm_head.weight':
            continue
        if name == 'transformer.wte.weight':
            tensor = tensor[:vocab_size]  # the padded rows never map to a token
        elif name.endswith(CONV1D):
            tensor = tensor.t()
        out[name] = tensor
    return out


def write_safetensors(path: Path, tensors: dict) -> None:
    """The safetensors format (8-byte header length, JSON header, raw little-endian data), written
    one tensor at a time: safetensors.torch.save_file would hold every tensor's bytes at once."""
    import torch

    from trainer import checkpoints
    header, offset = {}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {'dtype': SAFETENSORS_DTYPES[str(t.dtype)], 'shape': list(t.shape),
                        'data_offsets': [offset, offset + n]}
        offset += n
    header['__metadata__'] = {'format': 'pt'}  # transformers checks it
    raw = json.dumps(header, separators=(',', ':')).encode()
    raw += b' ' * (-len(raw) % 8)  # keeps the data 8-byte aligned
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(raw)))
        f.write(raw)
        for t in tensors.values():
            f.write(t.contiguous().view(-1).view(torch.uint8).numpy().data)  # one tensor's copy at most
            checkpoints.page_out(t)


def write_config(out: Path, model_cfg: dict, vocab_size: int, eos_id: int) -> None:
    from transformers import GenerationConfig, GPT2Config
    GPT2Config(
        vocab_size=vocab_size, n_positions=model_cfg['block_size'], n_embd=model_cfg['n_embd'],
        n_layer=model_cfg['n_layer'], n_head=model_cfg['n_head'], n_inner=None,
        activation_function='gelu_new',  # trainer.gpt.MLP: GELU, tanh approximation
        resid_pdrop=model_cfg['dropout'], embd_pdrop=model_cfg['dropout'], attn_pdrop=model_cfg['dropout'],
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default
        bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True,
        architectures=['GPT2LMHeadModel'], torch_dtype='float32',
    ).save_pretrained(out)
    GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id).save_pretrained(out)


def write_tokenizer(out: Path, tok, block_size: int) -> None:
    from transformers import PreTrainedTokenizerFast

    from trainer.run_inputs import EOT
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                            model_max_length=block_size, clean_up_tokenization_spaces=False,
                            ).save_pretrained(out)


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f'--out {out}: exists and is not a directory')
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInput(f'--out {out}: directory is not empty; pass --force to replace it, or choose '
                       f'another --out')


def export(run_dir: Path, out: Path, checkpoint=None, force: bool = False) -> str:
    from trainer import checkpoints
    from trainer.run_inputs import load_tokenizer, model_config

    started = time.time()
    if not run_dir.is_dir():
        raise BadInput(f'{run_dir}: no such run directory')
    check_out(out, force)
    path, step, skipped = checkpoints.for_run(run_dir, checkpoint)
    for bad, why in skipped:
        print(f'warning: skipped {bad.name}: {why}', file=sys.stderr)
    tok, info = load_tokenizer(run_dir)
    model_cfg = model_config(run_dir)
    weights = checkpoints.model_state(checkpoints.load(path))
    vocab_size = int(info['vocab_size'])
    check_expressible(model_cfg, weights, vocab_size)
    checkpoints.refuse_non_finite(path, weights)

    tmp = out.with_name(f'.{out.name}.tmp-{os.getpid()}')
    with parents_made_for(out):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            write_safetensors(tmp / 'model.safetensors', hf_weights(weights, vocab_size))
            write_config(tmp, model_cfg, vocab_size, int(info['eos_id']))
            write_tokenizer(tmp, tok, model_cfg['block_size'])
            replace_directory(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    files = ' '.join(sorted(p.name for p in out.iterdir()))
    return (f'exported {path.name} (step {step}) of {run_dir.name} to {out}: {files} '
            f'({vocab_size} token ids, {info["kind"]} tokenizer, {time.time() - started:.1f} s)')


def main(argv=None) -> int:
    p = one_line_parser(prog='python -m trainer.export', description=__doc__.split('\n\n')[0])
    p.add_argument('run_dir', help='the run directory (with checkpoints/)')
    p.add_argument('--out', required=True, help='the Hugging Face model directory to write')
    p.add_argument('--checkpoint', default=None, help='a checkpoint file (default: the newest intact one)')
    p.add_argument('--force', action='store_true', help='replace a non-empty --out')
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        line = export(Path(args.run_dir).expanduser().absolute(), Path(args.out).expanduser().absolute(),
                      args.checkpoint, args.force)
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        failure = filesystem_failure(e, Path(args.out).expanduser().absolute())
        if failure is None:
            raise
        print(f'error: {failure[1]}', file=sys.stderr)
        return failure[0]
    print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
