"""``qa``: a question about one document packed among distractor documents (The Sparse Frontier's QA tasks, after
RULER's QA and "lost in the middle", Liu et al., 2023).

Documents are numbered ("Document 3 (...)"); the question says which document it is about. Sources:

- ``shakespeare`` (offline, default): documents are excerpts of scenes (whole speeches: ``**SPEAKER**`` on its own
  line, as in the source Markdown, then the verse lines) from the plays of
  :func:`leanformer.data.sources.shakespeare_plays`; the question gives a line that occurs once in the
  whole corpus and asks who speaks it. Answer ``<answer>SPEAKER</answer>``; exact match after normalization.
  Filler unit: one distractor line.
- ``squad`` or ``hf:<dataset>`` (online, needs the ``datasets`` package): SQuAD-style records (``context``,
  ``question``, ``answers.text``); documents are contexts; score = best token F1 over the gold answers (or exact
  match with ``metric='exact'``). Filler unit: one distractor word. ``records=[...]`` injects such records directly.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections import Counter

from leanformer.errors import ConfigError, UserError
from leanformer.tasks.base import Sample, Task, extract_answer, normalize, token_f1


@dataclasses.dataclass(frozen=True)
class _Scene:
    title: str  # "Hamlet, Act I, Scene II"
    units: tuple[str, ...]  # rendered lines; the first line of a speech carries "**SPEAKER**\n"
    speakers: tuple[str, ...]  # speaker of each unit
    lines: tuple[str, ...]  # bare verse line of each unit
    starts: tuple[int, ...]  # unit index of each speech start


def _cap(head: str) -> str:
    """'ACT III' -> 'Act III' (roman numerals stay upper case)."""
    first, _, rest = head.partition(" ")
    return f"{first.capitalize()} {rest}".strip()


def _parse_play(text: str) -> list[_Scene]:
    """Scenes of one play's Markdown (``# play``, ``## ACT``, ``### SCENE``, ``**NAME**``, ``_stage direction_``)."""
    scenes: list[_Scene] = []
    play = act = scene = ""
    speaker, new, rows = None, False, []
    for raw in [*text.splitlines(), "# end"]:
        line = raw.strip()
        if line.startswith("#"):
            level, _, head = line.partition(" ")
            if rows:
                units = tuple(f"**{s}**\n{ln}" if first else ln for s, ln, first in rows)
                starts = tuple(i for i, r in enumerate(rows) if r[2])
                scenes.append(_Scene(f"{play}, {_cap(act)}, {_cap(scene)}", units, tuple(r[0] for r in rows),
                                     tuple(r[1] for r in rows), starts))
            rows, speaker = [], None
            if level == "#":
                play = head.strip()
            elif level == "##":
                act = head.strip()
            elif level == "###":
                scene = head.split(".")[0].strip()
        elif re.fullmatch(r"\*\*[^*]+\*\*", line):
            speaker, new = line.strip("*").strip(), True
        elif line and not line.startswith("_") and speaker is not None:
            rows.append((speaker, line, new))
            new = False
    return scenes


@functools.lru_cache(maxsize=1)
def shakespeare_scenes() -> tuple[_Scene, ...]:
    """Every scene (with at least two speakers) of every play of the Shakespeare corpus."""
    from leanformer.data.sources import shakespeare_plays

    scenes = [s for text in shakespeare_plays().values() for s in _parse_play(text)]
    return tuple(s for s in scenes if len(set(s.speakers)) >= 2)


@functools.lru_cache(maxsize=1)
def _line_counts() -> Counter:
    return Counter(normalize(ln) for s in shakespeare_scenes() for ln in s.lines)


@functools.lru_cache(maxsize=4)
def _hf_records(source: str) -> tuple[dict, ...]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"qa source {source!r} needs the 'datasets' package: pip install leanformer[hf]") from None
    name = "rajpurkar/squad" if source == "squad" else source[3:]
    try:
        ds = datasets.load_dataset(name, split="validation")
    except Exception as e:  # datasets raises many types; all mean "cannot load this"
        raise UserError(f"cannot load qa source {name!r}: {str(e).splitlines()[0]}") from None
    return tuple({"context": r["context"], "question": r["question"], "answers": list(r["answers"]["text"])}
                 for r in ds)


class _Docs:
    """Seeded on-demand stream of distractor documents ``(title, units)``; prefixes are stable."""

    def __init__(self, seed: str, make):
        self._rng, self._make, self.docs = random.Random(seed), make, []

    def take(self, n: int) -> list[tuple[str, list[str]]]:
        out, left, i = [], n, 0
        while left > 0:
            while i >= len(self.docs):
                self.docs.append(self._make(self._rng))
            title, units = self.docs[i]
            out.append((title, list(units[:left])))
            left -= len(out[-1][1])
            i += 1
        return out


@dataclasses.dataclass
class QA(Task):
    source: str = "shakespeare"
    metric: str = "auto"  # 'exact' | 'f1' | 'auto' (exact for shakespeare, f1 otherwise)
    doc_fraction: float = 0.2  # target excerpt size as a fraction of the length (shakespeare)
    records: list | None = dataclasses.field(default=None, repr=False)

    name = "qa"
    intro = "Read the following documents and answer the question about one of them."
    question_label = ""

    def __post_init__(self):
        if self.metric not in ("auto", "exact", "f1"):
            raise ConfigError(f"qa.metric: {self.metric!r} is not allowed; choose auto, exact or f1")
        if self.records is None and self.source not in ("shakespeare", "squad") and not self.source.startswith("hf:"):
            raise ConfigError(f"qa.source: {self.source!r} is not allowed; choose shakespeare, squad or hf:<name>")
        if not 0.0 < self.doc_fraction < 1.0:
            raise ConfigError(f"qa.doc_fraction: {self.doc_fraction} must be in (0, 1)")

    @property
    def answer_hint(self) -> str:
        if self._shakespeare:
            return "Write only the speaker's name, as <answer>NAME</answer>."
        return "Write a short answer taken from the document, as <answer>ANSWER</answer>."

    @property
    def _shakespeare(self) -> bool:
        return self.records is None and self.source == "shakespeare"

    def params(self) -> dict:
        out = {k: v for k, v in super().params().items() if k != "records"}
        if self.records is not None:
            out["records"] = len(self.records)
        return out

    def plan(self, rng: random.Random, length: int, count) -> dict:
        return self._plan_play(rng, length, count) if self._shakespeare else self._plan_records(rng)

    def _plan_play(self, rng: random.Random, length: int, count) -> dict:
        scenes, counts = shakespeare_scenes(), _line_counts()
        while True:
            t = rng.randrange(len(scenes))
            scene = scenes[t]
            i = rng.randrange(len(scene.lines))
            if len(scene.lines[i]) >= 25 and counts[normalize(scene.lines[i])] == 1:
                break
        per_unit = count("\n".join(scene.units)) / len(scene.units)
        width = max(4, int(self.doc_fraction * length / per_unit))
        speech = max(s for s in scene.starts if s <= i)
        start = rng.choice([s for s in scene.starts if speech - width // 2 <= s <= speech])
        target = (scene.title, scene.units[start:max(start + width, i + 1)])

        def distractor(r: random.Random):
            while True:
                k = r.randrange(len(scenes))
                if k != t:
                    break
            s = scenes[k]
            a = r.choice(s.starts)
            return s.title, s.units[a:a + width]

        question = f'who speaks the line "{scene.lines[i]}"?'
        return {"target": target, "docs": _Docs(f"qa-docs:{rng.random()}", distractor), "depth": rng.random(),
                "question": question, "answers": [scene.speakers[i]], "sep": "\n"}

    def _plan_records(self, rng: random.Random) -> dict:
        records = self.records if self.records is not None else _hf_records(self.source)
        while True:
            rec = records[rng.randrange(len(records))]
            if rec["answers"] and any(a.strip() for a in rec["answers"]):
                break
        others = sorted({r["context"] for r in records} - {rec["context"]})
        if not others:
            raise UserError("qa: the record source needs at least two distinct contexts")

        def distractor(r: random.Random):
            return "", others[r.randrange(len(others))].split()

        return {"target": ("", rec["context"].split()), "docs": _Docs(f"qa-docs:{rng.random()}", distractor),
                "depth": rng.random(), "question": rec["question"], "answers": [a for a in rec["answers"] if a],
                "sep": " "}

    def render(self, plan: dict, n: int) -> tuple[str, str]:
        docs = plan["docs"].take(n)
        at = round(plan["depth"] * len(docs))
        docs.insert(at, plan["target"])
        sep = plan["sep"]
        blocks = [f"Document {j} ({title}):\n{sep.join(units)}" if title else f"Document {j}:\n{sep.join(units)}"
                  for j, (title, units) in enumerate(docs, 1)]
        question = f"Question about document {at + 1}: {plan['question'][0].upper()}{plan['question'][1:]}"
        return question, "\n\n".join(blocks)

    def gold(self, plan: dict) -> tuple[list[str], list[str]]:
        return list(plan["answers"]), [plan["answers"][0]]

    def score(self, prediction: str, sample: Sample) -> float:
        pred = normalize(extract_answer(prediction))
        if not pred:
            return 0.0
        exact = self.metric == "exact" or (self.metric == "auto" and self._shakespeare)
        golds = [normalize(a) for a in sample.answer]
        if exact:
            return float(pred in golds)
        return max(token_f1(pred, g) for g in golds)
