"""Greedy batched generation for the sweep harness, on any Hugging Face causal LM.

- Prompts are encoded by :class:`PromptEncoder`: the tokenizer's chat template when asked (instruct models), the
  tokenizer's special tokens otherwise (e.g. BOS), then an *answer prefix* (default ``<answer>``) that starts the
  reply, so base models answer in the requested format. The text handed to the scorer is prefix + generation.
- Batches are left-padded (``attention_mask`` marks the pads), decoded greedily with ``model.generate`` (so sparse
  methods attached to the model run inside it) and stop per row at the stop string (``</answer>``), at EOS or after
  ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from leanformer.data.tokenizers import HFTokenizer

__all__ = ["PromptEncoder", "Generation", "generate_batch", "generate_engine", "made_prompts", "STOP"]

STOP = "</answer>"


class PromptEncoder:
    """Model inputs from task prompts. ``tokenizer`` is a :class:`ByteTokenizer` or :class:`HFTokenizer` (or any
    ``encode``/``decode`` object with ``pad_id``/``eos_id``); ``chat_template``: 'auto' (use it when the tokenizer
    has one), 'on' or 'off'."""

    def __init__(self, tokenizer, chat_template: str = "auto", answer_prefix: str = "<answer>"):
        self.tokenizer = tokenizer
        self.hf = tokenizer.tok if isinstance(tokenizer, HFTokenizer) else None
        has_template = bool(self.hf is not None and getattr(self.hf, "chat_template", None))
        if chat_template == "on" and not has_template:
            raise ValueError(f"tokenizer {tokenizer!r} has no chat template; use chat_template 'auto' or 'off'")
        self.use_template = has_template and chat_template != "off"
        self.answer_prefix = answer_prefix
        self.eos_id = getattr(tokenizer, "eos_id", None)
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    def encode(self, prompt: str) -> list[int]:
        if self.use_template:
            text = self.hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
            ids = list(self.hf(text, add_special_tokens=False)["input_ids"])
        elif self.hf is not None:
            ids = list(self.hf(prompt, add_special_tokens=True)["input_ids"])
        else:
            ids = list(self.tokenizer.encode(prompt))
        return ids + (list(self.tokenizer.encode(self.answer_prefix)) if self.answer_prefix else [])

    def overhead(self) -> int:
        """Tokens the encoding adds around a prompt (template, specials, answer prefix)."""
        return len(self.encode("")) - len(self.tokenizer.encode(""))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def made_prompts(jobs, model: str, tokenizer: str | None = None, chat_template: str = "off",
                 answer_prefix: str = "<answer>", workers: int = 0, encoder: PromptEncoder | None = None):
    """``((task, length, seed), sample, prompt ids)`` for each ``(task, task params, length, seed)`` of ``jobs``, in
    order: the task's sample, its prompt encoded by :class:`PromptEncoder` with ``model``'s tokenizer (or
    ``tokenizer``, an override as the sweep takes it). ``workers`` > 0: made ahead by that many processes (at most
    the cores but one): fitting a 32K-token prompt tokenizes it ~25 times (~1-2 s of CPU), far more than a GPU
    spends on it; else made here, one at a time as they are asked for (by ``encoder`` where the caller has built
    that encoder already)."""
    import os

    args = (model, tokenizer, chat_template, answer_prefix)
    if workers <= 0:
        if encoder is None:
            _prompt_worker_init(*args)
        else:
            _PROMPTS.clear()
            _PROMPTS.update(tok=encoder.tokenizer, encoder=encoder)
        yield from map(_prompt_job, jobs)
        return
    from leanformer.workers import in_workers

    yield from in_workers(_prompt_job, jobs, min(workers, max(1, (os.cpu_count() or 2) - 1)), _prompt_worker_init,
                          args)


_PROMPTS: dict = {}  # the process's tokenizer, encoder and task objects for made_prompts


def _prompt_worker_init(model: str, tokenizer: str | None, chat_template: str, answer_prefix: str):
    from leanformer.eval.models import open_tokenizer

    _PROMPTS.clear()
    _PROMPTS["tok"] = tok = open_tokenizer(model, tokenizer)
    _PROMPTS["encoder"] = PromptEncoder(tok, chat_template, answer_prefix)


def _prompt_job(job: tuple):
    from leanformer.eval.store import canonical_json
    from leanformer.tasks import TASKS

    name, params, length, seed = job
    key = (name, canonical_json(params))
    if key not in _PROMPTS:
        _PROMPTS[key] = TASKS[name](**params)
    sample = _PROMPTS[key].generate(_PROMPTS["tok"], length, seed)
    return (name, length, seed), sample, _PROMPTS["encoder"].encode(sample.prompt)


class _StopOnText(StoppingCriteria):
    """Per-row stop once the generated text of a row contains ``stop`` (looks at the last few tokens only)."""

    def __init__(self, decode, prompt_len: int, stop: str, window: int = 24):
        self.decode, self.prompt_len, self.stop, self.window = decode, prompt_len, stop, window

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        tail = input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window):].tolist()
        return torch.tensor([self.stop in self.decode(row) for row in tail], device=input_ids.device)


@dataclasses.dataclass
class Generation:
    text: str  # answer prefix + generated text, cut after the stop string
    output_tokens: int  # generated tokens up to and including the stop (pads after a stop not counted)


@torch.no_grad()
def generate_batch(model, encoder: PromptEncoder, batch: list[list[int]], max_new_tokens: int,
                   stop: str = STOP) -> list[Generation]:
    """Greedy-decode a left-padded batch of token lists ``batch`` (each ``[T_i]``); one :class:`Generation` each."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), encoder.pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids):] = 1
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=encoder.pad_id,
                              eos_token_id=encoder.eos_id, num_beams=1)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config,
                         stopping_criteria=StoppingCriteriaList([_StopOnText(encoder.decode, width, stop)]))
    return [_finish(encoder, row, stop) for row in out[:, width:].tolist()]


def _finish(encoder: PromptEncoder, row: list[int], stop: str, pad_stops: bool = True) -> Generation:
    """A row's generated tokens cut after EOS or the stop string (``pad_stops``: a pad also ends it, as
    ``generate`` pads rows that finished before the others)."""
    kept = []
    for tok in row:
        if pad_stops and tok == encoder.pad_id and tok != encoder.eos_id:
            break
        if encoder.eos_id is not None and tok == encoder.eos_id:
            kept.append(tok)
            break
        kept.append(tok)
        if stop in encoder.decode(kept[-24:]):
            break
    text = encoder.decode(kept)
    if stop in text:
        text = text[: text.index(stop) + len(stop)]
    return Generation(encoder.answer_prefix + text, len(kept))


def generate_engine(engine, encoder: PromptEncoder, batch: list[list[int]], max_new_tokens: int,
                    stop: str = STOP) -> tuple[list[Generation], list[tuple[float, float]]]:
    """Greedy-decode ``batch`` (token lists of any lengths) with a :class:`leanformer.infer.Engine`: rows
    prefilled together right-padded, attention on each row's own tokens, decoded together (so each row's tokens
    equal what it gets at batch 1). Returns the
    generations and each row's measured ``(prefill, decode)`` sparsity."""

    def done(tokens: list[list[int]]) -> bool:
        return all((encoder.eos_id is not None and encoder.eos_id in row) or stop in encoder.decode(row)
                   for row in tokens)

    rows = engine.generate(batch, max_new_tokens, stop=done)
    b = engine.last_batch
    sparsity = [(b.prefill_sparsity(r), b.decode_sparsity(r)) for r in range(len(batch))]
    return [_finish(encoder, row, stop, pad_stops=False) for row in rows], sparsity
