"""HellaSwag 0-shot, scored exactly as lm-evaluation-harness 0.4.13's `hellaswag` task (torch only).

What lm-eval computes (measured: /work/shared/reference/EVAL.md; its tasks/hellaswag/utils.py):
- query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices =
  [preprocess(e) for e in endings], gold = int(label) (the hub stores it as a string).
- one request per choice: context `query`, continuation " " + choice. Trailing spaces of the
  context move to the continuation; cont_ids = tok(ctx + cont)[len(tok(ctx)):]; no BOS; the model
  sees (ctx_ids + cont_ids)[-(block_size + 1):][:-1] (left truncation, counted here).
- acc: argmax of the summed log-likelihood of the continuation; acc_norm: argmax of that sum over
  len(choice) in characters, so it compares across tokenizers (bytes, bpe-builtin, gpt2).
Added: acc_norm_tokens, the same sums over the continuation's token count (build-nanogpt's
normalisation, on lm-eval's requests: build-nanogpt itself scores the raw `ctx` without the
activity label, so its published 0.2955 for GPT-2 is not this number's exact twin), `n`, and the
standard error of each mean (lm-eval's: sample standard deviation / sqrt(n)).

An item's four endings go through the model in one batch (rows right-padded: the model is causal,
so padding never changes an earlier position), several items per forward. The output head is
applied only at the continuation's positions, and its padded vocabulary rows are left out (the
export, which lm-eval scores, has exactly the tokenizer's ids). On N ranks each scores
items[rank::N] (no item twice, none padded in) and rank 0 gathers them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from trainer.errors import BadInput

TASK = 'hellaswag'
DATA_FILE = 'hellaswag_val.jsonl'  # the original file's name (rowanz/hellaswag)
N_CHOICES = 4
METRICS = ('acc', 'acc_norm', 'acc_norm_tokens')


@dataclass
class Item:
    index: int  # the item's line number in the data file, from 0
    label: int
    query: str
    choices: list[str]


def preprocess(text: str) -> str:
    """lm-eval's: the brackets are artifacts of HellaSwag's WikiHow part. Kept as it is, quirks
    included ("[substeps] If" becomes " If", with its space)."""
    text = text.strip()
    text = text.replace(' [title]', '. ')
    text = re.sub('\\[.*?\\]', '', text)
    text = text.replace('  ', ' ')
    return text


def item_from_doc(index: int, doc: dict) -> Item:
    ctx = doc['ctx_a'] + ' ' + doc['ctx_b'].capitalize()
    return Item(index=index, label=int(doc['label']),
                query=preprocess(doc['activity_label'] + ': ' + ctx),
                choices=[preprocess(e) for e in doc['endings']])


def read_items(path: Path) -> list[Item]:
    """Every item of a HellaSwag jsonl file (the original hellaswag_val.jsonl or the hub's split)."""
    items = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise BadInput(f'--data {path}: cannot read it ({e.strerror}); allowed: a HellaSwag jsonl file') from None
    for index, line in enumerate(lines):
        try:
            item = item_from_doc(index, json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInput(f'--data {path}: line {index + 1} is not a HellaSwag item ({type(e).__name__}: '
                           f'{e}); allowed: JSON lines with activity_label, ctx_a, ctx_b, endings, label') from None
        if len(item.choices) != N_CHOICES or not 0 <= item.label < N_CHOICES:
            raise BadInput(f'--data {path}: line {index + 1} has {len(item.choices)} endings and label '
                           f'{item.label}; allowed: {N_CHOICES} endings, a label 0..{N_CHOICES - 1}')
        items.append(item)
    if not items:
        raise BadInput(f'--data {path}: no items in it; allowed: a HellaSwag jsonl file')
    return items


def subset(items: list[Item], k: Optional[int]) -> list[Item]:
    """`k` items spread evenly over the file (the same ones every time), or all of them."""
    if k is None or k >= len(items):
        return items
    return [items[i * len(items) // k] for i in range(k)]


def subset_name(k: Optional[int], n_total: int) -> str:
    """How a record names the items it scored."""
    if k is None or k >= n_total:
        return f'all {n_total}'
    return f'{k} of {n_total}, evenly spaced'


# ---------------------------------------------------------------------------------------------
# Requests: what lm-eval feeds the model
# ---------------------------------------------------------------------------------------------

@dataclass
class Request:
    tokens: list[int]  # the model's input, already left-truncated
    continuation: list[int]  # the continuation's ids (the targets of the last positions)
    truncated: bool


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's _encode_pair: trailing spaces of the context move to the continuation, which is
    what the whole string's encoding gives after the context's ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def requests_for(item: Item, encode: Callable[[str], list[int]], block_size: int) -> list[Request]:
    found = []
    for choice in item.choices:
        context_ids, cont_ids = encode_pair(encode, item.query, ' ' + choice)
        if len(cont_ids) > block_size:
            raise BadInput(f'item {item.index}: an ending of {len(cont_ids)} tokens does not fit the '
                           f'model\'s {block_size} positions; allowed: endings shorter than the context')
        whole = context_ids + cont_ids
        found.append(Request(tokens=whole[-(block_size + 1):][:-1], continuation=cont_ids,
                             truncated=len(whole) > block_size + 1))
    return found


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

@dataclass
class LanguageModel:
    """What scoring needs of a causal LM: hidden states, the output head, the real vocabulary."""
    hidden: Callable[[torch.Tensor], torch.Tensor]  # ids (B, T) -> (B, T, C)
    head: Callable[[torch.Tensor], torch.Tensor]  # (N, C) -> logits (N, >= vocab_size)
    vocab_size: int
    block_size: int
    device: str = 'cpu'


def gpt_language_model(gpt, vocab_size: int, device: str = 'cpu') -> LanguageModel:
    """trainer.gpt.GPT (its padded rows beyond `vocab_size` are left out of the softmax)."""
    return LanguageModel(gpt.hidden, gpt.lm_head, vocab_size, gpt.config.block_size, device)


@torch.no_grad()
def score_requests(lm: LanguageModel, requests: list[Request]) -> list[tuple[float, bool]]:
    """(summed log-likelihood of the continuation, is it the greedy continuation) per request,
    all in one forward."""
    width = max(len(r.tokens) for r in requests)
    ids = torch.zeros((len(requests), width), dtype=torch.long)
    rows, positions, targets = [], [], []
    for row, r in enumerate(requests):
        ids[row, :len(r.tokens)] = torch.tensor(r.tokens)
        # the last len(continuation) inputs predict the continuation's tokens
        start = len(r.tokens) - len(r.continuation)
        rows += [row] * len(r.continuation)
        positions += range(start, len(r.tokens))
        targets += r.continuation
    hidden = lm.hidden(ids.to(lm.device))
    picked = hidden[torch.tensor(rows, device=lm.device), torch.tensor(positions, device=lm.device)]
    logprobs = F.log_softmax(lm.head(picked)[:, :lm.vocab_size].float(), dim=-1).cpu()
    targets = torch.tensor(targets)
    token_logprobs = logprobs.gather(1, targets[:, None])[:, 0]
    greedy = logprobs.argmax(dim=-1) == targets
    row_index = torch.tensor(rows)
    sums = torch.zeros(len(requests), dtype=torch.float64).index_add_(0, row_index, token_logprobs.double())
    misses = torch.zeros(len(requests), dtype=torch.long).index_add_(0, row_index, (~greedy).long())
    return [(float(s), int(m) == 0) for s, m in zip(sums, misses)]


def argmax(values: list[float]) -> int:
    """The first largest, as numpy's argmax (lm-eval's) breaks ties."""
    return max(range(len(values)), key=values.__getitem__)


def item_result(item: Item, requests: list[Request], scores: list[tuple[float, bool]]) -> dict:
    """One item's record, as --log-samples writes it."""
    lls = [s for s, _ in scores]
    chars = [len(c) for c in item.choices]
    tokens = [len(r.continuation) for r in requests]
    return {'index': item.index, 'label': item.label, 'loglikelihoods': lls,
            'ending_chars': chars, 'ending_tokens': tokens,
            'acc': int(argmax(lls) == item.label),
            'acc_norm': int(argmax([ll / c for ll, c in zip(lls, chars)]) == item.label),
            'acc_norm_tokens': int(argmax([ll / t for ll, t in zip(lls, tokens)]) == item.label),
            'truncated': any(r.truncated for r in requests)}


def encode_items(items: list[Item], encode: Callable[[str], list[int]], block_size: int) -> list:
    """[(item, its requests)], done once: a scoring during training reuses them every time."""
    return [(item, requests_for(item, encode, block_size)) for item in items]


def score_encoded(lm: LanguageModel, encoded: list, batch_items: int = 8) -> list[dict]:
    """Each item's result, in the order given. Items of similar length share a forward."""
    by_length = sorted(range(len(encoded)), key=lambda i: -max(len(r.tokens) for r in encoded[i][1]))
    results: list[Optional[dict]] = [None] * len(encoded)
    for start in range(0, len(by_length), batch_items):
        batch = by_length[start:start + batch_items]
        scores = score_requests(lm, [r for i in batch for r in encoded[i][1]])
        for k, i in enumerate(batch):
            item, requests = encoded[i]
            results[i] = item_result(item, requests, scores[k * N_CHOICES:(k + 1) * N_CHOICES])
    return results


def _ranks() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(items: list) -> list:
    """This rank's items: items[rank::world], so no item is scored twice and none is padded in."""
    rank, world = _ranks()
    return items[rank::world]


def gather(mine: list[dict]) -> list[dict]:
    """Every rank's results, on every rank, in the file's order."""
    import torch.distributed as dist
    rank, world = _ranks()
    if world == 1:
        return mine
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return sorted((r for part in gathered for r in part), key=lambda r: r['index'])


def score_items(lm: LanguageModel, items: list[Item], encode: Callable[[str], list[int]],
                batch_items: int = 8) -> list[dict]:
    """Every item's result (on every rank, in the file's order), each rank scoring its share."""
    return gather(score_encoded(lm, encode_items(my_share(items), encode, lm.block_size), batch_items))


def mean_and_stderr(values: list[int]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float('nan')
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def summarize(results: list[dict]) -> dict:
    """acc, acc_norm, acc_norm_tokens with their standard errors, n and truncated items."""
    summary: dict = {'n': len(results)}
    for metric in METRICS:
        mean, stderr = mean_and_stderr([r[metric] for r in results])
        summary[metric] = mean
        summary[f'{metric}_stderr'] = stderr
    summary['truncated'] = sum(1 for r in results if r['truncated'])
    return summary


def sample_line(result: dict) -> str:
    """One --log-samples line (the per-item figures, not the derived decisions)."""
    keys = ('index', 'label', 'loglikelihoods', 'ending_chars', 'ending_tokens')
    return json.dumps({k: result[k] for k in keys}) + '\n'
