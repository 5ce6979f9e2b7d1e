"""T5 span corruption (Raffel et al., 2020, "Exploring the Limits of Transfer Learning ..."; nanoT5, Nawrot, 2023).

A raw window of ``L`` tokens is split into alternating non-noise / noise spans (it starts with non-noise and ends
with noise): ``round(L * noise_density)`` noise tokens in ``round(noise / mean_noise_span_length)`` spans, span
lengths a uniformly random composition. Span ``i`` is replaced in the inputs by sentinel ``top - i`` (sentinels
count down from the top of the vocabulary, ``<extra_id_0>`` first); the targets are ``sentinel_i`` followed by span
``i``'s tokens, for every span; both end with EOS::

    tokens  10 11 12 13 14 15 16 17 18 19      noise at 12 13 and 18 19
    inputs  10 11 S0 14 15 16 17 S1 EOS        targets  S0 12 13 S1 18 19 EOS

:func:`compute_input_and_target_lengths` picks the raw length so the inputs are exactly the requested length
(512 inputs: 568 raw tokens, 114 targets). The noise mask follows ``random_spans_noise_mask`` of the T5 code and
Hugging Face's ``run_t5_mlm_flax.py`` (which nanoT5 uses), vectorised over the batch; draws differ, the
distribution is the same. :class:`SpanCorruption` is the trainer objective (see :mod:`leanformer.train.objectives`)
with evaluation by loss, token accuracy on targets (nanoT5's "accuracy") and span accuracy (whole span right).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import numpy as np
import torch

from leanformer.config import cfg
from leanformer.errors import ConfigError, UserError


@dataclasses.dataclass(kw_only=True)
class SpanCorruptionConfig:
    noise_density: float = cfg(0.15, gt=0.0, lt=1.0, help="fraction of raw tokens masked (T5: 0.15)")
    mean_noise_span_length: float = cfg(3.0, ge=1.0, help="mean masked span length in tokens (T5: 3)")


def _lengths(raw: int, density: float, mean_span: float) -> tuple[int, int]:
    noise = int(round(raw * density))
    spans = int(round(noise / mean_span))
    return raw - noise + spans + 1, noise + spans + 1


def compute_input_and_target_lengths(inputs_length: int, noise_density: float = 0.15,
                                     mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(raw tokens, target tokens)`` such that corrupting the raw tokens gives exactly ``inputs_length`` inputs
    (EOS included): the largest raw length whose inputs fit. ``(512, 0.15, 3.0) -> (568, 114)``."""
    if inputs_length < 2:
        raise UserError(f"span corruption needs inputs_length >= 2, got {inputs_length}")
    raw = inputs_length
    while _lengths(raw + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        raw += 1
    targets = _lengths(raw, noise_density, mean_noise_span_length)[1]
    # T5's tweak: at density 0.5 keep targets no longer than inputs.
    if noise_density == 0.5 and targets > inputs_length:
        raw, targets = raw - 1, targets - 1
    return raw, targets


def _num_noise(length: int, density: float, mean_span: float) -> tuple[int, int]:
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(int(round(min(noise, length - noise) / mean_span)), 1)
    return noise, spans


def _random_segmentation(rng: np.random.Generator, batch: int, n_items: int, n_segments: int) -> np.ndarray:
    """``[batch, n_segments]`` positive lengths summing to ``n_items``, each row a uniform random composition."""
    if n_segments == 1:
        return np.full((batch, 1), n_items)
    # choose n_segments-1 of the n_items-1 gaps uniformly (ranks of a random permutation)
    ranks = rng.random((batch, n_items - 1)).argsort(axis=1).argsort(axis=1)
    cuts = np.nonzero(ranks < n_segments - 1)[1].reshape(batch, n_segments - 1) + 1
    edges = np.concatenate([np.zeros((batch, 1), int), cuts, np.full((batch, 1), n_items)], axis=1)
    return np.diff(edges, axis=1)


def random_spans_noise_mask(rng: np.random.Generator, batch: int, length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """Boolean ``[batch, length]``, True = noise; each row starts with non-noise and ends with a noise span."""
    noise, spans = _num_noise(length, noise_density, mean_noise_span_length)
    noise_len = _random_segmentation(rng, batch, noise, spans)
    keep_len = _random_segmentation(rng, batch, length - noise, spans)
    interleaved = np.stack([keep_len, noise_len], axis=2).reshape(batch, 2 * spans)
    starts = np.cumsum(interleaved, axis=1)[:, :-1]
    indicator = np.zeros((batch, length), dtype=np.int64)
    np.put_along_axis(indicator, starts, 1, axis=1)
    return np.cumsum(indicator, axis=1) % 2 == 1


def _replace_spans(tokens: np.ndarray, spans: np.ndarray, top: int, eos: int) -> np.ndarray:
    """Replace each True-span of ``spans`` by one sentinel (``top``, ``top-1``, ...), drop its other tokens, append
    EOS. All rows must keep the same number of tokens."""
    starts = spans & ~np.pad(spans, ((0, 0), (1, 0)))[:, :-1]
    sentinel = top + 1 - np.cumsum(starts, axis=1)
    out = np.where(starts, sentinel, tokens)
    keep = ~spans | starts
    rows = out[keep].reshape(tokens.shape[0], -1)
    return np.concatenate([rows, np.full((tokens.shape[0], 1), eos, dtype=rows.dtype)], axis=1)


def span_corrupt(tokens: np.ndarray, noise_mask: np.ndarray, sentinel_top: int, eos_id: int):
    """``tokens [B, L]`` + ``noise_mask [B, L]`` -> ``(inputs [B, L - noise + spans + 1],
    targets [B, noise + spans + 1])`` as int64 arrays (see the module docstring)."""
    inputs = _replace_spans(tokens.astype(np.int64), noise_mask, sentinel_top, eos_id)
    targets = _replace_spans(tokens.astype(np.int64), ~noise_mask, sentinel_top, eos_id)
    return inputs, targets


def sentinel_top(tokenizer, vocab_size: int, n_spans: int) -> int:
    """Id of the first sentinel: the tokenizer's ``<extra_id_0>`` when it has one (T5 tokenizers, counting down),
    else the top of the model's vocabulary, which must then leave ``n_spans`` ids above the tokenizer's."""
    hf = getattr(tokenizer, "tok", None)
    if hf is not None and "<extra_id_0>" in hf.get_vocab():
        top = hf.convert_tokens_to_ids("<extra_id_0>")
        last = hf.convert_tokens_to_ids(f"<extra_id_{n_spans - 1}>")
        if last != top - n_spans + 1:
            raise UserError(f"tokenizer sentinels do not count down from <extra_id_0>={top} for {n_spans} spans")
        if top >= vocab_size:
            raise ConfigError(f"model.vocab_size={vocab_size} does not cover the tokenizer's <extra_id_0>={top}")
        return top
    base = getattr(tokenizer, "vocab_size", 0)
    if vocab_size - n_spans < base:
        raise ConfigError(f"model.vocab_size={vocab_size} leaves no room for {n_spans} sentinel ids above the "
                          f"tokenizer's {base} tokens; set model.vocab_size >= {base + n_spans}")
    return vocab_size - 1


class SpanCorruptionBatches:
    """Batch ``i``: ``batch_size`` random raw windows, corrupted; a pure function of ``(seed, i)``."""

    def __init__(self, objective: SpanCorruption, tokens: np.ndarray, batch_size: int, seed: int):
        if len(tokens) < objective.raw_len + 1:
            raise UserError(f"training split has {len(tokens)} tokens, fewer than the {objective.raw_len + 1} "
                            f"one span-corrupted window of data.seq_len={objective.seq_len} inputs needs")
        self.obj, self.tokens, self.batch_size, self.seed = objective, tokens, batch_size, seed

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - self.obj.raw_len + 1, size=self.batch_size)
        return self.obj.corrupt(self.tokens[starts[:, None] + np.arange(self.obj.raw_len)], rng)


class SpanCorruption:
    """T5 pretraining objective for ``seq_len`` input tokens: batches hold ``input_ids [B, seq_len]`` and
    ``labels [B, targets_len]``; the model shifts labels right to make its decoder inputs."""

    log_keys = ("loss", "accuracy", "span_accuracy")

    def __init__(self, tokenizer, seq_len: int, vocab_size: int, config: SpanCorruptionConfig | None = None):
        c = config or SpanCorruptionConfig()
        self.seq_len, self.config = seq_len, c
        self.raw_len, self.targets_len = compute_input_and_target_lengths(seq_len, c.noise_density,
                                                                          c.mean_noise_span_length)
        self.n_spans = _num_noise(self.raw_len, c.noise_density, c.mean_noise_span_length)[1]
        self.top = sentinel_top(tokenizer, vocab_size, self.n_spans)
        self.eos = getattr(tokenizer, "eos_id", None)
        if self.eos is None:
            raise UserError(f"span corruption needs a tokenizer with an EOS token; {tokenizer!r} has none")

    def corrupt(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        mask = random_spans_noise_mask(rng, windows.shape[0], windows.shape[1], self.config.noise_density,
                                       self.config.mean_noise_span_length)
        inputs, targets = span_corrupt(windows, mask, self.top, self.eos)
        return {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(targets)}

    def batches(self, tokens: np.ndarray, batch_size: int, seed: int) -> SpanCorruptionBatches:
        return SpanCorruptionBatches(self, tokens, batch_size, seed)

    def is_sentinel(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids <= self.top) & (ids > self.top - self.n_spans)

    @torch.no_grad()
    def evaluate(self, model, tokens: np.ndarray, batch_size: int, max_batches: int | None, device,
                 autocast_dtype=None, seed: int = 0) -> dict:
        """Non-overlapping raw windows of ``tokens`` in order (fixed masks from ``seed``): mean target loss,
        token accuracy and span accuracy (a span counts when its sentinel and all its tokens are predicted)."""
        was_training = model.training
        model.eval()
        device = torch.device(device)
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        n_win = len(tokens) // self.raw_len
        nll = correct = n_tok = spans_ok = n_spans = 0.0
        for b, i in enumerate(range(0, n_win, batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            idx = np.arange(i, min(i + batch_size, n_win))
            batch = self.corrupt(tokens[idx[:, None] * self.raw_len + np.arange(self.raw_len)],
                                 np.random.default_rng([seed, i]))
            x, y = batch["input_ids"].to(device), batch["labels"].to(device)
            with ctx:
                logits, _ = model(x, labels=y)
            logits = logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            ok = logits.argmax(-1) == y
            correct += float(ok.sum())
            n_tok += y.numel()
            # span k of a row = its k-th sentinel and the tokens up to the next one (EOS excluded)
            span_id = torch.cumsum(self.is_sentinel(y).long(), dim=1)
            wrong = torch.zeros(y.shape[0], self.n_spans + 1, device=device)
            wrong.scatter_add_(1, span_id, ((~ok) & (y != self.eos)).float())
            spans_ok += float((wrong[:, 1:] == 0).sum())  # every row holds exactly n_spans spans
            n_spans += y.shape[0] * self.n_spans
        if was_training:
            model.train()
        if n_tok == 0:
            raise UserError(f"validation split has fewer than {self.raw_len} tokens: nothing to evaluate")
        return {"loss": nll / n_tok, "accuracy": correct / n_tok, "span_accuracy": spans_ok / max(n_spans, 1.0),
                "tokens": int(n_tok)}
