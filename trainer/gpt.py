"""The GPT-2 family, small and readable (in the spirit of nanoGPT's model.py).

References:
- [Vaswani17] Attention Is All You Need, https://arxiv.org/abs/1706.03762
- [GPT-1] Radford et al. 2018, Improving Language Understanding by Generative Pre-Training
- [GPT-2] Radford et al. 2019, Language Models are Unsupervised Multitask Learners
- [GPT-3] Brown et al. 2020, Language Models are Few-Shot Learners, https://arxiv.org/abs/2005.14165
- [Press17] Press & Wolf 2017, Using the Output Embedding to Improve Language Models,
  https://arxiv.org/abs/1608.05859

Only torch at module level: the Composer wrapper (`ComposerGPT`) imports composer lazily, so
the plain model can be used (and benchmarked) without Composer.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB_MULTIPLE = 64


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round the vocabulary up to a multiple of 64: GPT-2's 50257 becomes 50304, which keeps the
    embedding and output matmuls on fast tensor-core tile sizes (nanoGPT measured ~25% faster).
    The extra rows are never targets, so they only learn to get a very low probability."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # the tokenizer's vocabulary; the model pads it (padded_vocab_size)
    block_size: int = 1024  # context length (GPT-2: 1024 positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # GPT-2 used 0.1; for single-epoch pretraining 0 is the usual choice
    bias: bool = True  # GPT-2 has biases in Linear layers and LayerNorms

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f'n_embd={self.n_embd} must be divisible by n_head={self.n_head}')


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with a causal mask [Vaswani17 §3.2], followed by
    the output projection W^O [Vaswani17 eq. in §3.2.2] that mixes the heads back together."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # q, k, v for all heads in one matmul (same maths as three separate projections).
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # scaled at init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # Flash/memory-efficient kernels where available; is_causal gives the decoder mask [GPT-1 §3.1].
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network with a 4x hidden width [Vaswani17 §3.3] and GELU
    (instead of ReLU) as in GPT-1 §4.1 / GPT-2."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh')  # GPT-2's "gelu_new" is the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: LayerNorm moved to the input of each sub-block [GPT-2 §2.3],
    residual connections around both [Vaswani17 §3.1]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.padded_vocab_size = padded_vocab_size(config.vocab_size)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(self.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned positions [GPT-1 §3.1]
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),  # final LayerNorm [GPT-2 §2.3]
        ))
        self.lm_head = nn.Linear(config.n_embd, self.padded_vocab_size, bias=False)
        # Tied input and output embeddings [Press17], as in GPT-1/GPT-2.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02) for weights [GPT-1 §4.1], zero biases, and the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layer) because
        each block adds two such outputs to the stream [GPT-2 §2.3]."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, 'residual_projection', False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head shares wte). The GPT-2 paper's 124M/117M
        figures count the token embedding; non_embedding=True drops the position table too."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, padded_vocab_size)."""
        return self.lm_head(self.hidden(idx))

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> the final hidden states (B, T, n_embd), before the output head:
        a scorer that needs the logits of a few positions only applies lm_head to those."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f'sequence length {T} exceeds block_size {self.config.block_size}')
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B:
        6 * N (matmuls over non-embedding params) + 12 * L * H * Q * T (attention)."""
        cfg = self.config
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: decay the matrices (Linear weights, embeddings), not biases or
        LayerNorm gains -- decaying those only fights the normalisation (as in GPT-3 / nanoGPT)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [
            {'params': decay, 'weight_decay': weight_decay},
            {'params': no_decay, 'weight_decay': 0.0},
        ]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats over all target positions."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


def split_window(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored window holds seq_len + 1 tokens: inputs are the first seq_len, targets the same
    shifted by one, so every stored token is a target exactly once."""
    batch = batch.long()
    return batch[:, :-1], batch[:, 1:]


def make_composer_model(config: GPTConfig, bytes_per_token: float, train_metrics: bool = True):
    """Wrap GPT as a Composer model with loss, accuracy, perplexity and bits-per-byte metrics.

    Defined in a function so that `import trainer.gpt` does not import Composer (~7 s)."""
    from composer.models import ComposerModel

    from trainer.metrics import BatchStats, make_metrics

    class ComposerGPT(ComposerModel):

        def __init__(self):
            super().__init__()
            self.model = GPT(config)
            self.train_metrics = make_metrics(bytes_per_token)
            self.val_metrics = make_metrics(bytes_per_token)
            self.train_metrics_enabled = train_metrics
            self._stats_for = None
            self._stats = None

        def forward(self, batch):
            inputs, _ = split_window(batch)
            return self.model(inputs)

        def loss(self, outputs, batch, *args, **kwargs):
            _, targets = split_window(batch)
            return lm_loss(outputs, targets)

        def eval_forward(self, batch, outputs=None):
            return outputs if outputs is not None else self.forward(batch)

        def get_metrics(self, is_train: bool = False):
            if is_train:
                return self.train_metrics if self.train_metrics_enabled else {}
            return self.val_metrics

        def update_metric(self, batch, outputs, metric) -> None:
            # Composer calls this once per metric with the same outputs: compute the stats once.
            # A weak reference, so the logits are not kept alive until the next batch.
            if self._stats_for is None or self._stats_for() is not outputs:
                _, targets = split_window(batch)
                self._stats = BatchStats(outputs, targets)
                self._stats_for = weakref.ref(outputs)
            metric.update(self._stats)

        def flops_per_batch(self, batch) -> float:
            inputs, _ = split_window(batch)
            return self.model.flops_per_token(inputs.shape[1]) * inputs.numel()

    return ComposerGPT()
