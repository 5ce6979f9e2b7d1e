"""Sequence-to-sequence fine-tuning tasks (nanoT5's fine-tuning stage): each task yields :class:`Example` s per split
and is scored by Rouge-L of greedy generations.

- ``shakespeare_speaker`` / ``shakespeare_continue``: offline tasks from the Shakespeare corpus (split by play).
- ``natural_instructions``: Super-Natural-Instructions (Wang et al., 2022) in Tk-Instruct's format, from a local
  clone of ``allenai/natural-instructions``.
"""

from __future__ import annotations

from leanformer.errors import UserError
from leanformer.finetune_tasks.example import Example

__all__ = ["Example", "TASKS", "load_task"]

TASKS = ("shakespeare_speaker", "shakespeare_continue", "natural_instructions")


def load_task(name: str, split: str, data_dir: str | None = None, max_examples: int | None = None,
              seed: int = 0, **kw) -> list[Example]:
    """Examples of task ``name`` for ``split`` (train / validation / test)."""
    if name in ("shakespeare_speaker", "shakespeare_continue"):
        from leanformer.finetune_tasks.shakespeare import shakespeare_examples

        return shakespeare_examples(name.split("_", 1)[1], split, max_examples, seed)
    if name == "natural_instructions":
        from leanformer.finetune_tasks.natural_instructions import load_natural_instructions

        if data_dir is None:
            raise UserError("task natural_instructions needs data_dir: a clone of "
                            "https://github.com/allenai/natural-instructions")
        return load_natural_instructions(data_dir, split, max_examples, seed, **kw)
    raise UserError(f"unknown fine-tuning task {name!r}; choose one of {', '.join(TASKS)}")
