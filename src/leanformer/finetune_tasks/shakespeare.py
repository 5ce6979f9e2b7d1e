"""Offline fine-tuning tasks built from the Shakespeare plays (split by play, so test plays are unseen):

- ``speaker``: the last three speeches of a scene (``NAME: first line``) and the first line of the next speech ->
  the name of its speaker. Often one of the names in the context (dialogue alternates), never given away.
- ``continue``: a speaker and one line of verse or prose -> the next line of the same speech.

Examples are drawn in play order, then a seeded shuffle; ``max_examples`` keeps the first ones after the shuffle.
"""

from __future__ import annotations

import random
import re

from leanformer.finetune_tasks.example import Example

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_CONTEXT = 3
_MAX_LINE = 80


def speeches(play_markdown: str) -> list[list[tuple[str, list[str]]]]:
    """Scenes of a play, each a list of ``(speaker, lines)``; stage directions and headings dropped."""
    scenes: list[list[tuple[str, list[str]]]] = [[]]
    speaker, lines = None, []

    def flush():
        if speaker and lines:
            scenes[-1].append((speaker, list(lines)))

    for raw in play_markdown.splitlines():
        line = raw.strip()
        m = _SPEAKER.match(line)
        if line.startswith("#"):
            flush()
            speaker, lines = None, []
            if line.startswith("### "):
                scenes.append([])
        elif m:
            flush()
            speaker, lines = m.group(1).strip().title(), []
        elif not line:
            flush()
            speaker, lines = (speaker, []) if speaker else (None, [])
        elif speaker and not (line[0] in "_*" and line[-1] == line[0]):  # stage directions
            lines.append(line[:_MAX_LINE])
    flush()
    return [s for s in scenes if s]


def shakespeare_examples(kind: str, split: str, max_examples: int | None = None, seed: int = 0) -> list[Example]:
    from leanformer.data.sources import _split_of_index, shakespeare_files

    out: list[Example] = []
    for i, path in enumerate(shakespeare_files()):
        if _split_of_index(i) != split:
            continue
        for scene in speeches(path.read_text(encoding="utf-8")):
            if kind == "speaker":
                for j in range(_CONTEXT, len(scene)):
                    ctx = "\n".join(f"{s}: {ls[0]}" for s, ls in scene[j - _CONTEXT:j])
                    out.append(Example(f"Who speaks next?\n{ctx}\nNext: {scene[j][1][0]}", (scene[j][0],)))
            elif kind == "continue":
                for s, ls in scene:
                    out.extend(Example(f"Continue the line. {s}: {a}", (b,)) for a, b in zip(ls, ls[1:]))
            else:
                raise ValueError(f"unknown Shakespeare task kind {kind!r}; choose speaker or continue")
    random.Random(seed).shuffle(out)
    return out[:max_examples] if max_examples else out
