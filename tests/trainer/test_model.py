"""The model and its metrics: preset sizes, GPT-2 details, bits per byte."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from support import REPO
from trainer.gpt import GPT, GPTConfig, padded_vocab_size

PRESETS = REPO / 'trainer' / 'conf' / 'model'


def preset(name: str) -> GPTConfig:
    model = yaml.safe_load((PRESETS / f'{name}.yaml').read_text())['model']
    return GPTConfig(**{k: v for k, v in model.items() if k != 'name'})


def test_the_launcher_can_list_exactly_these_presets():
    assert sorted(p.stem for p in PRESETS.glob('*.yaml')) == ['gpt2', 'gpt2-large', 'gpt2-medium', 'gpt2-xl', 'tiny']


def test_gpt2_has_the_published_124m_parameters():
    with torch.device('meta'):
        model = GPT(preset('gpt2'))
    # 124.4M with the vocabulary padded to 50304 (124.0M unpadded), counted once for the tied head.
    assert 124.0e6 < model.num_params() < 124.6e6
    assert model.padded_vocab_size == 50304


@pytest.mark.parametrize('name, millions', [('gpt2-medium', 355), ('gpt2-large', 774), ('gpt2-xl', 1558)])
def test_larger_presets_match_their_published_sizes(name, millions):
    with torch.device('meta'):
        model = GPT(preset(name))
    assert abs(model.num_params() / 1e6 - millions) / millions < 0.01


def test_gpt2_details():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=100, block_size=16, n_layer=4, n_head=2, n_embd=64)
    model = GPT(cfg)
    assert padded_vocab_size(100) == 128 and model.transformer.wte.weight.shape[0] == 128
    assert model.lm_head.weight is model.transformer.wte.weight  # tied embeddings
    fc = model.transformer.h[0].mlp.c_fc.weight
    proj = model.transformer.h[0].mlp.c_proj.weight
    attn_proj = model.transformer.h[0].attn.c_proj.weight
    assert abs(fc.std().item() - 0.02) < 0.002
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(proj.std().item() - residual_std) < 0.1 * residual_std
    assert abs(attn_proj.std().item() - residual_std) < 0.1 * residual_std
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.LayerNorm)  # pre-LN block


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 50, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 50
    with torch.no_grad():
        assert torch.equal(model(x)[0, :5], model(y)[0, :5])
        assert not torch.equal(model(x)[0, 5:], model(y)[0, 5:])


def test_bits_per_byte_divides_nats_by_ln2_and_bytes_per_token():
    from trainer.metrics import BatchStats, make_metrics
    metrics = make_metrics(bytes_per_token=2.0)
    vocab = 4
    logits = torch.zeros(1, 3, vocab)  # uniform: cross-entropy = ln 4 nats = 2 bits per token
    targets = torch.tensor([[0, 1, 2]])
    stats = BatchStats(logits, targets)
    for metric in metrics.values():
        metric.update(stats)
    assert metrics['loss'].compute().item() == pytest.approx(math.log(4))
    assert metrics['perplexity'].compute().item() == pytest.approx(4.0)
    assert metrics['bits_per_byte'].compute().item() == pytest.approx(1.0)  # 2 bits / 2 bytes
    assert 0.0 <= metrics['accuracy'].compute().item() <= 1.0
