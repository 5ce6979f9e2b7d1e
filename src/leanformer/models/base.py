"""What every leanformer model shares: loss over a batch dict, parameter counts, safetensors save/load.

A model file holds architecture only; the trainer talks to models through :meth:`LeanModel.compute_loss`, so a
family with a different batch layout (T5's encoder/decoder inputs) overrides that one method.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from leanformer.config import atomic_write_text

WEIGHTS_NAME = "model.safetensors"
MODEL_META_NAME = "model.json"


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross entropy in fp32 over positions whose target is not ``ignore_index``."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=ignore_index)


def decode_loop(first_logits: torch.Tensor, step, max_new_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None, eos_id: int | None = None) -> torch.Tensor:
    """The token loop every ``generate`` shares: greedy (``temperature=0``) or sampled next tokens from
    ``first_logits [B, V]``; ``step(next_ids [B, 1], i) -> logits [B, V]`` advances the model by one token (the
    ``i``-th new one). Stops early when every row emitted ``eos_id``. Returns the new tokens ``[B, n]``.
    Not transformers' ``generate``: hourglass, dynamic pooling and T5 here are not ``GenerationMixin`` models."""
    logits, out = first_logits, []
    for i in range(max_new_tokens):
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=generator)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        out.append(nxt)
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
        if i + 1 < max_new_tokens:
            logits = step(nxt, i)
    return torch.cat(out, dim=1)


class LeanModel(nn.Module):
    """Base class: ``family`` names the registry entry, ``config`` is the family's config dataclass."""

    family: str = ""

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Causal-LM default: ``batch['input_ids'] [B, T]``, ``batch['labels'] [B, T]`` (-100 = ignore)."""
        _, loss = self(batch["input_ids"], targets=batch["labels"])
        return loss, {}

    def objective(self, tokenizer, seq_len: int):
        """How the trainer turns tokens into this family's batches and evaluates it: causal LM by default
        (see :mod:`leanformer.train.objectives`); a family with another objective overrides this."""
        from leanformer.train.objectives import CausalLM

        return CausalLM(tokenizer, seq_len, self.config.vocab_size)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``model.json`` (family + config) into ``directory``."""
        from leanformer.models.registry import model_config_to_dict

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{WEIGHTS_NAME}.tmp"
        save_model(self, str(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / WEIGHTS_NAME)
        meta = {"family": self.family, "config": model_config_to_dict(self.config)}
        atomic_write_text(d / MODEL_META_NAME, json.dumps(meta, indent=2))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load safetensors weights (never pickle); every tensor must match by name and shape."""
        load_model(self, str(path), strict=True)
