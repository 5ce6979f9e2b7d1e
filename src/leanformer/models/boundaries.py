"""Segment-boundary sources for Dynamic Token Pooling ("Efficient Transformers with Dynamic Token Pooling", Nawrot
et al., 2023; reference: PiotrNawrot/dynamic-pooling). A boundary at ``t`` (value 1 in ``[B, T]``) ends a segment at
``t``.

- ``gumbel``: the predictor's logits through a relaxed Bernoulli (temperature ``τ``), hard ``soft > 0.5`` with a
  straight-through gradient; :func:`binomial_prior_loss` pulls the boundary rate to ``prior``.
- ``entropy``: targets are spikes of the model's own next-byte entropy, ``H_t > H_{t-1}`` and ``H_t > H_{t-2}``
  (:func:`entropy_targets`); the predictor learns them with BCE.
- ``unigram``: targets from a SentencePiece unigram model trained locally on the corpus (:class:`UnigramSegmenter`):
  the end of every piece inside a word, and every whitespace byte (which closes the word's last piece). They look
  ahead within a word, so only the predictor (BCE) is used at run time.
- ``whitespace``: ``x_t`` is a whitespace byte; ``fixed``: ``t % k == 0`` (the Hourglass groups). Both causal, used
  directly.

BCE is ``binary_cross_entropy_with_logits`` on the predictor's logits: the sigmoid is applied exactly once (the
reference applies it twice).
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leanformer.errors import UserError

SOURCES = ("gumbel", "entropy", "unigram", "whitespace", "fixed", "none")
PREDICTED = ("gumbel", "entropy", "unigram")
WHITESPACE = (9, 10, 11, 12, 13, 32)  # \t \n \v \f \r and space
_WORD = re.compile(rb"[^\t\n\v\f\r ]+")


class BoundaryPredictor(nn.Module):
    """MLP on hidden states ``[B, T, D]`` -> boundary logits ``[B, T]``."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


def gumbel_boundaries(logits: torch.Tensor, temperature: float, training: bool) -> torch.Tensor:
    """Hard 0/1 boundaries; in training a relaxed-Bernoulli sample with a straight-through gradient."""
    if not training:
        return (logits > 0).to(logits.dtype)
    u = torch.rand_like(logits, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits.float() + torch.log(u) - torch.log1p(-u)) / temperature)  # RelaxedBernoulli
    hard = (soft > 0.5).float()
    return (hard + soft - soft.detach()).to(logits.dtype)


def binomial_prior_loss(boundaries: torch.Tensor, prior: float) -> torch.Tensor:
    """``-log Binomial(T, prior).prob(#boundaries) / T``, averaged over rows (the reference's prior loss)."""
    t = boundaries.shape[-1]
    dist = torch.distributions.Binomial(total_count=t, probs=torch.tensor(prior, device=boundaries.device),
                                        validate_args=False)
    return -(dist.log_prob(boundaries.float().sum(-1)) / t).mean()


def entropy_targets(logits: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` next-token logits -> ``[B, T]`` 0/1: the entropy at t exceeds that at t-1 and t-2."""
    logp = torch.log_softmax(logits.detach().float(), -1)
    h = -(logp.exp() * logp).sum(-1)
    prev1 = F.pad(h, (1, 0), value=-math.inf)[:, :-1]
    prev2 = F.pad(h, (2, 0), value=-math.inf)[:, :-2]
    return ((h > prev1) & (h > prev2)).float()


def whitespace_boundaries(ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(WHITESPACE, device=ids.device)).float()


def fixed_boundaries(ids: torch.Tensor, k: int, pos: int = 0) -> torch.Tensor:
    t = torch.arange(pos, pos + ids.shape[1], device=ids.device)
    return (t % k == 0).float().expand(ids.shape[0], -1)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


class UnigramSegmenter:
    """Word-internal segmentation by a unigram LM: Viterbi over the pieces' log-probabilities (plain Python, so
    only training needs ``sentencepiece``). Works on UTF-8 bytes of whitespace-separated words."""

    def __init__(self, scores: dict[str, float]):
        self.scores = {p.encode("utf-8"): s for p, s in scores.items() if p and not p.startswith("<")}
        self.max_len = max(map(len, self.scores))
        self.unk = min(self.scores.values()) - 10.0  # sentencepiece's unknown-piece penalty
        self._split = lru_cache(maxsize=1 << 17)(self._viterbi)

    @classmethod
    def train(cls, text: str, vocab_size: int = 2000, max_sentences: int = 200_000) -> UnigramSegmenter:
        """Train a SentencePiece unigram model on the words of ``text`` (needs the ``sentencepiece`` package)."""
        try:
            import sentencepiece as spm
        except ImportError:
            raise UserError("training the unigram segmenter needs `pip install sentencepiece`") from None
        import io

        words = text.split()[:max_sentences]
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_writer=model, vocab_size=vocab_size,
                                       model_type="unigram", add_dummy_prefix=False, character_coverage=1.0,
                                       normalization_rule_name="identity", hard_vocab_limit=False,
                                       split_digits=False, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        return cls({sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
                    if not (sp.is_unknown(i) or sp.is_control(i))})

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({p.decode("utf-8"): s for p, s in self.scores.items()}))

    @classmethod
    def load(cls, path) -> UnigramSegmenter:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"unigram vocabulary {str(path)!r} not found; build it with UnigramSegmenter.train")
        return cls(json.loads(p.read_text()))

    def _viterbi(self, word: bytes) -> tuple[int, ...]:
        n = len(word)
        best, back = [0.0] + [-math.inf] * n, [0] * (n + 1)
        for end in range(1, n + 1):
            for start in range(max(0, end - self.max_len), end):
                s = self.scores.get(word[start:end], self.unk if end - start == 1 else None)
                if s is not None and best[start] + s > best[end]:
                    best[end], back[end] = best[start] + s, start
        ends, i = [], n
        while i > 0:
            ends.append(i)
            i = back[i]
        return tuple(reversed(ends))

    def split(self, word: bytes) -> tuple[int, ...]:
        """Piece end offsets (exclusive) of ``word``."""
        return self._split(word)

    def stream_targets(self, tokens: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """:meth:`targets` of a whole 1-D byte stream (float32, same length), computed once so that training batches
        slice it instead of segmenting every step. Chunks end at whitespace, so no word is cut in two."""
        tokens = np.asarray(tokens)
        out = np.empty(len(tokens), dtype=np.float32)
        start = 0
        while start < len(tokens):
            end = min(start + chunk, len(tokens))
            if end < len(tokens):  # extend to the next separator so the chunk's last word is whole
                sep = np.flatnonzero((tokens[end:] > 255) | np.isin(tokens[end:], WHITESPACE))
                end = end + int(sep[0]) + 1 if len(sep) else len(tokens)
            out[start:end] = self.targets(torch.from_numpy(tokens[start:end].astype(np.int64))[None])[0].numpy()
            start = end
        return out

    def targets(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` byte ids -> 0/1 targets: whitespace bytes and ends of pieces that are not a word's last.

        Ids above 255 (special tokens) count as whitespace. Words are found with one regular-expression scan per
        row and segmented through the cached Viterbi, so the per-step cost is per word, not per byte."""
        arr = ids.detach().cpu().numpy()
        sep = (arr > 255) | np.isin(arr, WHITESPACE)
        out = sep.astype(np.float32)
        clean = np.where(sep, 32, arr).astype(np.uint8)
        for r in range(arr.shape[0]):
            row = clean[r].tobytes()
            for m in _WORD.finditer(row):
                start = m.start()
                for e in self.split(m.group())[:-1]:
                    out[r, start + e - 1] = 1.0
        return torch.from_numpy(out).to(ids.device)
