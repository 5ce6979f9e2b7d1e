"""Training objectives: how a family turns a token stream into training batches and how it is evaluated.

The trainer asks the model for its objective (:meth:`leanformer.models.base.LeanModel.objective`) and never looks
at the family: an objective has

- ``batches(tokens, batch_size, seed)`` -> an object whose ``batch(i)`` is a pure function of ``(seed, i)`` (exact
  resume needs nothing else),
- ``evaluate(model, tokens, batch_size, max_batches, device, autocast_dtype)`` -> a metrics dict with ``loss``,
- ``log_keys``: the metrics logged as ``val_<key>`` at each evaluation.

:class:`CausalLM` is the default (next-token windows, bits per byte); T5's span corruption lives in
:mod:`leanformer.data.span_corruption`.
"""

from __future__ import annotations

import numpy as np

from leanformer.data.packing import RandomWindows


class CausalLM:
    """Random ``seq_len + 1`` windows -> ``input_ids``/``labels``; evaluated by loss and bits per byte."""

    log_keys = ("loss", "bits_per_byte")

    def __init__(self, tokenizer, seq_len: int, vocab_size: int):
        self.tokenizer, self.seq_len, self.vocab_size = tokenizer, seq_len, vocab_size
        self._byte_lengths: np.ndarray | None = None

    def batches(self, tokens: np.ndarray, batch_size: int, seed: int) -> RandomWindows:
        return RandomWindows(tokens, self.seq_len, batch_size, seed)

    def evaluate(self, model, tokens: np.ndarray, batch_size: int, max_batches: int | None, device,
                 autocast_dtype=None) -> dict:
        from leanformer.eval.lm import evaluate_lm, token_byte_lengths

        if self._byte_lengths is None:
            self._byte_lengths = token_byte_lengths(self.tokenizer, self.vocab_size)
        return evaluate_lm(model, tokens, self.tokenizer, self.seq_len, batch_size, max_batches, device,
                           autocast_dtype, self._byte_lengths)


class AlignedTargetsLM(CausalLM):
    """:class:`CausalLM` whose batches also carry per-token arrays computed once per token stream by
    ``per_token(tokens) -> {key: array}`` (e.g. unigram boundary targets of Dynamic Token Pooling), so no step
    recomputes them; the arrays of the last stream are kept for the next ``batches`` call on it."""

    def __init__(self, tokenizer, seq_len: int, vocab_size: int, per_token):
        super().__init__(tokenizer, seq_len, vocab_size)
        self.per_token = per_token
        self._cache: tuple | None = None

    def batches(self, tokens: np.ndarray, batch_size: int, seed: int) -> RandomWindows:
        # the same memory (a view of it counts) is the same stream; the cache holds the array itself, so no other
        # array can be given its address while the arrays computed for it are kept
        key = (tokens.__array_interface__["data"][0], len(tokens), tokens.strides)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, tokens, self.per_token(tokens))
        return RandomWindows(tokens, self.seq_len, batch_size, seed, aligned=self._cache[2])
