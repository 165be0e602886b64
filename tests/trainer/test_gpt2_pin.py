"""trainer.gpt.GPT is GPT-2: its weights, copied into Hugging Face's GPT2LMHeadModel, give the
same logits. Any drift from GPT-2's architecture (norm placement, GELU variant, attention
scaling or mask, tied head, biases, learned positions) breaks the comparison."""

from __future__ import annotations

import pytest
import torch
import yaml

from support import REPO
from trainer.gpt import GPT, GPTConfig


@pytest.fixture(scope='module')
def transformers():
    import transformers  # seconds: imported by these tests only, not at collection
    return transformers


# Hugging Face stores these as Conv1D weights, (in, out): the transpose of nn.Linear's.
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def hf_config(transformers, config: GPTConfig, vocab_size: int):
    return transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, activation_function='gelu_new',
        layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def as_hf_state(model: GPT) -> dict:
    state = {}
    for name, tensor in model.state_dict().items():
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    return state


def randomized(model: GPT) -> GPT:
    """Every parameter random, biases and LayerNorm gains included: a zero bias or a unit gain
    would hide a misplaced or missing one."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def test_gpt_logits_equal_hugging_face_gpt2_with_the_same_weights(transformers):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=250, block_size=48, n_layer=3, n_head=4, n_embd=64)
    ours = randomized(GPT(config)).eval()
    theirs = transformers.GPT2LMHeadModel(hf_config(transformers, config, ours.padded_vocab_size)).eval()
    state = as_hf_state(ours)
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected, f'parameters GPT-2 does not have: {unexpected}'
    hf_params = {name for name, _ in theirs.named_parameters()}
    assert not hf_params & set(missing), f'GPT-2 parameters GPT lacks: {sorted(hf_params & set(missing))}'
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()  # still tied

    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    # agrees to ~5e-7 today; exact instead of tanh GELU is off by ~3e-4, LayerNorm eps 1e-6 by ~3e-5
    with torch.no_grad():
        got = ours(idx)
        want = theirs(idx).logits
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-5), f'max |diff| {(got - want).abs().max():.2e}'


def test_gpt2_preset_is_hugging_face_gpt2_small(transformers):
    model = yaml.safe_load((REPO / 'trainer' / 'conf' / 'model' / 'gpt2.yaml').read_text())['model']
    reference = transformers.GPT2Config()  # the released 124M model
    assert (model['n_layer'], model['n_head'], model['n_embd'], model['block_size'], model['vocab_size']) \
        == (reference.n_layer, reference.n_head, reference.n_embd, reference.n_positions, reference.vocab_size)
    assert reference.activation_function == 'gelu_new' and reference.layer_norm_epsilon == 1e-5
