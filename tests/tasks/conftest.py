"""Tokenizers for the task tests: the byte tokenizer and a small BPE trained here, offline, in about a second."""

from __future__ import annotations

import pytest

from leanformer.data import ByteTokenizer


class _BPE:
    """``encode``/``decode`` over a ``tokenizers.Tokenizer`` (the interface tasks accept)."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))


@pytest.fixture(scope="session")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from leanformer.tasks import TASKS

    corpus = [TASKS[name]().generate(ByteTokenizer(), 6000, seed).prompt for name in TASKS for seed in range(3)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    bpe = _BPE(tok)
    # A real subword tokenizer: well under one token per byte, and lossless.
    assert len(bpe.encode(corpus[0])) < 0.5 * len(corpus[0].encode()) and bpe.decode(bpe.encode(corpus[0])) == corpus[0]
    return bpe


@pytest.fixture(scope="session")
def byte():
    return ByteTokenizer()
