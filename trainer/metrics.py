"""Language-model metrics, token-weighted and summed across ranks by torchmetrics.

Cross-entropy is measured in nats (natural log). Derived numbers:
- perplexity = exp(loss)
- bits per byte = loss / ln 2 / bytes_per_token

`bytes_per_token` is measured when the dataset is prepared (UTF-8 bytes of the text divided by
the tokens stored, end-of-text tokens included) and saved in its dataset.json. It makes bits per
byte comparable across tokenizers: ~1.0 for the byte tokenizer (slightly less, because the
end-of-text tokens carry no bytes), ~4 for GPT-2 BPE on English web text, ~3 for a small BPE
trained on the built-in corpus.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

LN2 = math.log(2.0)


class BatchStats:
    """Summed cross-entropy, correct predictions and token count of one batch, computed once
    and fed to every metric (the logits are the largest tensor in the model: one pass only)."""

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor):
        logits = logits.reshape(-1, logits.size(-1))
        targets = targets.reshape(-1)
        self.loss_sum = F.cross_entropy(logits.float(), targets, reduction='sum').double()
        self.correct = (logits.argmax(dim=-1) == targets).sum()
        self.tokens = targets.numel()


class _TokenMetric(Metric):
    """Keeps token-weighted sums: summed cross-entropy, correct predictions, tokens."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state('loss_sum', default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx='sum')
        self.add_state('correct', default=torch.tensor(0, dtype=torch.long), dist_reduce_fx='sum')
        self.add_state('tokens', default=torch.tensor(0, dtype=torch.long), dist_reduce_fx='sum')

    def update(self, stats: 'BatchStats') -> None:
        self.loss_sum += stats.loss_sum
        self.correct += stats.correct
        self.tokens += stats.tokens

    def mean_loss(self) -> torch.Tensor:
        return self.loss_sum / self.tokens.clamp(min=1)


class LanguageLoss(_TokenMetric):
    """Mean next-token cross-entropy in nats."""

    def compute(self):
        return self.mean_loss()


class TokenAccuracy(_TokenMetric):
    """Fraction of positions where the most likely token is the target."""

    def compute(self):
        return self.correct.double() / self.tokens.clamp(min=1)


class Perplexity(_TokenMetric):

    def compute(self):
        return torch.exp(self.mean_loss())


class BitsPerByte(_TokenMetric):
    """loss (nats/token) / ln 2 -> bits/token; / bytes_per_token -> bits/byte."""

    def __init__(self, bytes_per_token: float):
        super().__init__()
        if not bytes_per_token > 0:
            raise ValueError(f'bytes_per_token must be > 0, got {bytes_per_token}')
        self.bytes_per_token = float(bytes_per_token)

    def compute(self):
        return self.mean_loss() / LN2 / self.bytes_per_token


def make_metrics(bytes_per_token: float) -> dict[str, Metric]:
    return {
        'loss': LanguageLoss(),
        'accuracy': TokenAccuracy(),
        'perplexity': Perplexity(),
        'bits_per_byte': BitsPerByte(bytes_per_token),
    }
