"""Packing a text split into one token stream, and deterministic, resumable batches of fixed-length windows.

- :func:`token_stream` tokenizes the split's documents, joined by the tokenizer's EOS (when it has one), into a 1-D
  int32 numpy array, cached on disk keyed by (source, tokenizer, split, cap).
- :class:`RandomWindows` draws training batches: batch ``i`` is a pure function of ``(seed, i)`` (random window
  starts from ``numpy.random.default_rng([seed, i])``), so resuming at step ``s`` needs only ``s`` — no iterator
  state to lose, no batch repeated or skipped.
- :func:`sequential_windows` covers a split with non-overlapping windows in order (evaluation).

A window of ``seq_len + 1`` tokens gives ``input_ids = w[:-1]`` and ``labels = w[1:]``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from leanformer.errors import UserError


def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("LEANFORMER_CACHE", Path.home() / ".cache" / "leanformer"))


def token_stream(documents: list[str], tokenizer, cache_key: str | None = None, cache_dir: str | None = None,
                 max_tokens: int | None = None) -> np.ndarray:
    """All documents as one int32 token array (EOS between documents when the tokenizer has ``eos_id``)."""
    path = None
    if cache_key is not None:
        digest = hashlib.sha1(f"{cache_key}|{max_tokens}|{len(documents)}".encode()).hexdigest()[:16]
        path = _cache_dir(cache_dir) / f"tokens-{digest}.npy"
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn cache file is rebuilt, never trusted
    eos = getattr(tokenizer, "eos_id", None)
    parts: list[np.ndarray] = []
    total = 0
    for doc in documents:
        ids = np.asarray(tokenizer.encode(doc), dtype=np.int32)
        if eos is not None:
            ids = np.append(ids, np.int32(eos))
        parts.append(ids)
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, tokens, allow_pickle=False)
        os.replace(tmp, path)
    return tokens


def split_tokens(data_cfg, tokenizer, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Token streams of the given splits of a run's ``data`` config (source, tokenizer, cache, cap), cached on disk
    under one key, so training and ``leanformer eval`` read the same tokens."""
    from leanformer.data.sources import load_source

    d = data_cfg
    source = load_source(d.source, d.val_fraction, d.text_field, d.hf_config)
    key = f"{d.source}|{d.tokenizer}|{d.hf_config}|{d.text_field}|{d.val_fraction}"
    return {s: token_stream(source.documents(s), tokenizer, f"{key}|{s}", d.cache_dir, d.max_tokens) for s in splits}


def _window_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = torch.from_numpy(tokens[idx].astype(np.int64))
    return {"input_ids": w[:, :-1], "labels": w[:, 1:]}


class RandomWindows:
    """Training batches of ``batch_size`` random windows; ``batch(i)`` is deterministic in ``(seed, i)``.

    ``aligned`` maps extra batch keys to arrays of per-token values aligned with ``tokens`` (e.g. boundary targets
    computed once for the whole corpus); each batch carries the windows of those arrays under the inputs."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0,
                 aligned: dict[str, np.ndarray] | None = None):
        if len(tokens) < seq_len + 2:
            raise UserError(f"training split has {len(tokens)} tokens, fewer than data.seq_len+2={seq_len + 2}")
        for key, arr in (aligned or {}).items():
            if len(arr) != len(tokens):
                raise UserError(f"aligned array {key!r} has {len(arr)} values for {len(tokens)} tokens")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.aligned = dict(aligned or {})

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        out = _window_batch(self.tokens, starts, self.seq_len)
        if self.aligned:
            idx = starts[:, None] + np.arange(self.seq_len)[None, :]
            out.update({key: torch.from_numpy(arr[idx]) for key, arr in self.aligned.items()})
        return out


def sequential_windows(tokens: np.ndarray, seq_len: int, batch_size: int,
                       max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Non-overlapping windows covering ``tokens`` in order; the last partial window is dropped only if < 2 tokens."""
    n_windows = max(0, (len(tokens) - 1) // seq_len)
    starts = np.arange(n_windows) * seq_len
    for b, i in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield _window_batch(tokens, starts[i:i + batch_size], seq_len)
    rest = len(tokens) - 1 - n_windows * seq_len
    if rest >= 1 and (max_batches is None or -(-n_windows // batch_size) < max_batches):
        w = torch.from_numpy(tokens[n_windows * seq_len:].astype(np.int64))[None]
        yield {"input_ids": w[:, :-1], "labels": w[:, 1:]}
