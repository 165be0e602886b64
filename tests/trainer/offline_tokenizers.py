"""Tokenizers the tests and benchmarks make offline (GPT-2's own needs the network)."""

from __future__ import annotations


def gpt2_sized_tokenizer():
    """A byte-level BPE with GPT-2's 50257 ids (<|endoftext|> = 50256), made up offline: the 256
    bytes, then 50000 two-byte merges. GPT-2's own tokenizer needs the network."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from trainer.run_inputs import bytes_to_unicode
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    pairs = [(a, b) for a in alphabet for b in alphabet][:50000]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({a + b: 256 + i for i, (a, b) in enumerate(pairs)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken('<|endoftext|>', special=True)])
    assert tok.get_vocab_size() == 50257 and tok.token_to_id('<|endoftext|>') == 50256
    return tok
