"""BERT's masked-language-model objective (Devlin et al., 2019) as a trainer objective, used by ``bert``.

Rule: each position is selected with probability ``mask_prob`` (0.15); a selected token is replaced by the mask
token with probability 0.8, by a uniformly random ordinary token with probability 0.1, and kept with probability
0.1. ``labels`` hold the original token at selected positions and -100 elsewhere, so the loss is the cross entropy
over selected positions only. Batches are random ``seq_len`` windows; batch ``i`` (windows and masks) is a pure
function of ``(seed, i)``, so resume is exact. Evaluation masks non-overlapping windows in order with fixed seeds.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from leanformer.config import cfg
from leanformer.errors import ConfigError, UserError


@dataclasses.dataclass(kw_only=True)
class MaskedLMConfig:
    mask_prob: float = cfg(0.15, gt=0.0, lt=1.0, help="fraction of positions predicted")
    replace_mask: float = cfg(0.8, ge=0.0, le=1.0, help="of the selected: replaced by the mask token")
    replace_random: float = cfg(0.1, ge=0.0, le=1.0, help="of the selected: replaced by a random token")

    def __post_init__(self):
        if self.replace_mask + self.replace_random > 1.0:
            raise ConfigError(f"objective: replace_mask + replace_random = {self.replace_mask + self.replace_random}"
                              " exceeds 1")


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, config: MaskedLMConfig, mask_id: int,
                n_random: int) -> dict[str, torch.Tensor]:
    """``ids [B, T]`` -> ``input_ids`` (masked) and ``labels`` (-100 where not selected), int64 tensors."""
    # Not transformers' DataCollatorForLanguageModeling: it needs a HF tokenizer and draws from torch's RNG, and a
    # batch here must be a pure function of (seed, index) for any tokenizer, the byte tokenizer included.
    selected = rng.random(ids.shape) < config.mask_prob
    r = rng.random(ids.shape)
    to_mask = selected & (r < config.replace_mask)
    to_random = selected & (r >= config.replace_mask) & (r < config.replace_mask + config.replace_random)
    inputs = ids.astype(np.int64)
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.integers(0, n_random, size=int(to_random.sum()))
    labels = np.where(selected, ids, -100).astype(np.int64)
    return {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


class MaskedLMBatches:
    def __init__(self, objective: MaskedLM, tokens: np.ndarray, batch_size: int, seed: int):
        if len(tokens) < objective.seq_len + 1:
            raise UserError(f"training split has {len(tokens)} tokens, fewer than data.seq_len+1="
                            f"{objective.seq_len + 1}")
        self.obj, self.tokens, self.batch_size, self.seed = objective, tokens, batch_size, seed

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - self.obj.seq_len + 1, size=self.batch_size)
        return self.obj.mask(self.tokens[starts[:, None] + np.arange(self.obj.seq_len)], rng)


class MaskedLM:
    """Masked-LM objective for ``seq_len`` windows; ``mask_id`` must lie outside the tokenizer's vocabulary."""

    log_keys = ("loss", "accuracy")

    def __init__(self, tokenizer, seq_len: int, vocab_size: int, mask_id: int, config: MaskedLMConfig | None = None):
        self.seq_len, self.config, self.mask_id = seq_len, config or MaskedLMConfig(), mask_id
        base = getattr(tokenizer, "vocab_size", vocab_size - 1)
        if not base <= mask_id < vocab_size:
            raise ConfigError(f"model.mask_token_id={mask_id} must lie in [{base}, {vocab_size}) (above the "
                              f"tokenizer's {base} tokens, below model.vocab_size={vocab_size})")
        # random replacements come from ordinary tokens (the byte tokenizer's 256 bytes, not its specials)
        self.n_random = min(base, getattr(tokenizer, "pad_id", base) or base)

    def mask(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return mask_tokens(windows, rng, self.config, self.mask_id, self.n_random)

    def batches(self, tokens: np.ndarray, batch_size: int, seed: int) -> MaskedLMBatches:
        return MaskedLMBatches(self, tokens, batch_size, seed)

    @torch.no_grad()
    def evaluate(self, model, tokens: np.ndarray, batch_size: int, max_batches: int | None, device,
                 autocast_dtype=None, seed: int = 0) -> dict:
        """Mean cross entropy and accuracy over the masked positions of non-overlapping windows, in order."""
        was_training = model.training
        model.eval()
        device = torch.device(device)
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        n_win = len(tokens) // self.seq_len
        nll = correct = count = 0.0
        for b, i in enumerate(range(0, n_win, batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            idx = np.arange(i, min(i + batch_size, n_win))
            batch = self.mask(tokens[idx[:, None] * self.seq_len + np.arange(self.seq_len)],
                              np.random.default_rng([seed, i]))
            x, y = batch["input_ids"].to(device), batch["labels"].to(device)
            with ctx:
                logits = model(x).float()
            nll += float(F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="sum"))
            keep = y != -100
            correct += float((logits.argmax(-1)[keep] == y[keep]).sum())
            count += float(keep.sum())
        if was_training:
            model.train()
        if count == 0:
            raise UserError(f"validation split has fewer than {self.seq_len} tokens: nothing to evaluate")
        return {"loss": nll / count, "accuracy": correct / count, "tokens": int(count)}
