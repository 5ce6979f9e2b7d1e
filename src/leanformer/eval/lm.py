"""Language-model metrics: loss, perplexity and bits per byte over a token stream.

Bits per byte = (sum of next-token negative log-likelihoods in nats) / ln 2 / (UTF-8 bytes those target tokens
spell). Targets that spell no bytes (EOS, padding and other specials) are excluded from both sums, so the number
compares across tokenizers. Perplexity is per counted token.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from leanformer.data.packing import sequential_windows
from leanformer.data.tokenizers import ByteTokenizer


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 byte length each token id spells (0 for specials and ids outside the tokenizer)."""
    if isinstance(tokenizer, ByteTokenizer):
        out = np.zeros(vocab_size, dtype=np.int64)
        out[:256] = 1
        return out
    n = min(vocab_size, getattr(tokenizer, "vocab_size", vocab_size))
    out = np.zeros(vocab_size, dtype=np.int64)
    for i in range(n):
        out[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return out


@torch.no_grad()
def evaluate_lm(model, tokens: np.ndarray, tokenizer, seq_len: int, batch_size: int = 8,
                max_batches: int | None = None, device: str | torch.device = "cpu",
                autocast_dtype: torch.dtype | None = None, byte_lengths: np.ndarray | None = None) -> dict:
    """Evaluate a causal LM (``model(input_ids) -> logits``) over non-overlapping windows of ``tokens``."""
    was_training = model.training
    model.eval()
    vocab = model.config.vocab_size
    blen = torch.from_numpy(byte_lengths if byte_lengths is not None else token_byte_lengths(tokenizer, vocab))
    blen = blen.to(device)
    nll_sum, n_tok, n_bytes = 0.0, 0, 0
    device = torch.device(device)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    for batch in sequential_windows(tokens, seq_len, batch_size, max_batches):
        x, y = batch["input_ids"].to(device), batch["labels"].to(device)
        with ctx:
            logits = model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        bytes_per = blen[y.reshape(-1).clamp(0, vocab - 1)]
        keep = bytes_per > 0
        nll_sum += float(nll[keep].sum())
        n_tok += int(keep.sum())
        n_bytes += int(bytes_per.sum())
    if was_training:
        model.train()
    if n_tok == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "bits_per_byte": float("nan"), "tokens": 0,
                "bytes": 0}
    loss = nll_sum / n_tok
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": nll_sum / math.log(2) / n_bytes,
            "tokens": n_tok, "bytes": n_bytes}


def unigram_entropy_bits_per_byte(tokens: np.ndarray, byte_lengths: np.ndarray) -> float:
    """Entropy of the empirical unigram token distribution, in bits per byte (the no-context baseline)."""
    counts = np.bincount(tokens, minlength=len(byte_lengths)).astype(np.float64)
    counts[byte_lengths == 0] = 0
    p = counts / counts.sum()
    nz = p > 0
    bits_per_token = -(p[nz] * np.log2(p[nz])).sum()
    mean_bytes = (p * byte_lengths).sum()
    return float(bits_per_token / mean_bytes)
