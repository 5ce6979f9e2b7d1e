"""The shared machinery of the long-context task suite: samples, prompt layout, length fitting, answer parsing.

A task is a seeded generator plus a scorer (RULER, Hsieh et al., 2024; The Sparse Frontier, Nawrot et al., 2025):

- :meth:`Task.plan` draws everything that decides the answer (needles, chains, chapters, ...) from a
  ``random.Random`` seeded by ``(task name, seed)``; no global random state is touched.
- :meth:`Task.context` renders the context holding ``n`` units of filler (words, lines, rare words, ...). The
  answer never depends on ``n``.
- :meth:`Task.generate` finds, by exponential then binary search, the largest ``n`` whose prompt fits in
  ``length`` tokens of the given tokenizer, and checks that the prompt holds at least 95% of ``length`` tokens.

Prompt layout (the question is stated before and after the context)::

    {intro}

    Question: {question}

    {context}

    Question: {question}
    {answer format}

Answer format: every task asks for ``<answer>ITEM, ITEM, ...</answer>`` (one item for single answers). The parser
(:func:`extract_answer`, :func:`split_items`, :func:`normalize`) is lenient: it takes the text between the first
``<answer>`` and the following ``</answer>`` (or the end; the whole output when there is no tag), ignores case,
articles (a, an, the), punctuation, list numbering and extra whitespace. An empty or unparsable answer scores 0.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from typing import Any

from leanformer.errors import UserError

__all__ = ["Sample", "Task", "extract_answer", "normalize", "split_items", "iou", "token_f1", "fraction_correct",
           "positional_hits", "MIN_FILL"]

# A prompt must hold at least this fraction of the requested length.
MIN_FILL = 0.95
_TAG_OPEN, _TAG_CLOSE = "<answer>", "</answer>"


@dataclasses.dataclass
class Sample:
    """One generated sample. ``answer`` is the gold answer as data (a string, a list); ``answer_text`` is the gold
    answer in the task's answer format, so ``task.score(sample.answer_text, sample) == 1.0``."""

    task: str
    prompt: str
    answer: Any
    answer_text: str
    seed: int
    length: int
    prompt_tokens: int
    meta: dict = dataclasses.field(default_factory=dict)


class Task:
    """Base class. Subclasses set ``name``, ``intro`` and ``answer_hint`` and implement :meth:`plan`,
    :meth:`question`, :meth:`context`, :meth:`gold` and :meth:`score`."""

    name: str = ""
    intro: str = ""
    answer_hint: str = "Write the answer as <answer>ANSWER</answer>."
    question_label: str = "Question: "

    def plan(self, rng: random.Random, length: int, count) -> Any:
        """Draw the sample's structure; ``count(text) -> int`` counts tokens, for plans that scale with length."""
        raise NotImplementedError

    def question(self, plan: Any) -> str:
        raise NotImplementedError

    def context(self, plan: Any, n: int) -> str:
        """The context with ``n`` units of filler (``n >= 0``); tokens must grow (nearly) monotonically in ``n``."""
        raise NotImplementedError

    def gold(self, plan: Any) -> tuple[Any, list[str]]:
        """``(answer as data, answer items in order)``."""
        raise NotImplementedError

    def score(self, prediction: str, sample: Sample) -> float:
        raise NotImplementedError

    def keyed_items(self, plan: Any) -> list[str] | None:
        """The gold answer items, each led by the query it answers, in a form :meth:`score` also accepts (e.g.
        ``K: V`` for ``V``); None where the task has no such form. A model trained to write these copies the
        query first and then its answer, two copying steps instead of one lookup (``Sample.meta["keyed_answer_text"]``;
        used by the reference checkpoints' training mixture, never by the evaluation)."""
        return None

    def chain_items(self, plan: Any) -> list[str] | None:
        """The gold answer reached through its intermediate lookups, one ``KEY: VALUE`` step per item, the last step
        ending in the answer, in a form :meth:`score` also accepts; None where the task has no such form. For tasks
        that need several lookups in a row (story_multihop, variable_tracking): a model trained to write each step
        looks one thing up at a time, each step's key being the text it has just written
        (``Sample.meta["chain_answer_text"]``; used by the reference checkpoints' training mixture, never by the
        evaluation)."""
        return None

    def params(self) -> dict:
        """The task's parameters (part of the harness's cell key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def render(self, plan: Any, n: int) -> tuple[str, str]:
        """``(question, context)``; tasks whose question depends on the layout (e.g. a document number) override."""
        return self.question(plan), self.context(plan, n)

    def prompt(self, plan: Any, n: int) -> str:
        q, context = self.render(plan, n)
        q = self.question_label + q
        return (f"{self.intro}\n\n{q}\n\n{context}\n\n{q}\n"
                f"{self.answer_hint}")

    def generate(self, tokenizer, length: int, seed: int) -> Sample:
        """A sample whose prompt holds between 95% and 100% of ``length`` tokens of ``tokenizer``."""
        if not isinstance(length, int) or length < 1:
            raise UserError(f"task length {length!r} must be a positive integer number of tokens")
        rng = random.Random(f"{self.name}:{seed}")

        def count(text: str) -> int:
            return len(tokenizer.encode(text))

        plan = self.plan(rng, length, count)
        n, tokens = fit(lambda k: count(self.prompt(plan, k)), length, f"task {self.name!r}")
        answer, items = self.gold(plan)
        meta = {"filler_units": n}
        if (keyed := self.keyed_items(plan)) is not None:
            meta["keyed_answer_text"] = f"{_TAG_OPEN}{', '.join(keyed)}{_TAG_CLOSE}"
        if (chain := self.chain_items(plan)) is not None:
            meta["chain_answer_text"] = f"{_TAG_OPEN}{', '.join(chain)}{_TAG_CLOSE}"
        return Sample(task=self.name, prompt=self.prompt(plan, n), answer=answer,
                      answer_text=f"{_TAG_OPEN}{', '.join(items)}{_TAG_CLOSE}", seed=seed, length=length,
                      prompt_tokens=tokens, meta=meta)


def fit(tokens_of, length: int, what: str) -> tuple[int, int]:
    """Largest ``n`` with ``tokens_of(n) <= length`` (exponential then binary search); checks the 95% floor."""
    base = tokens_of(0)
    if base > length:
        raise UserError(f"{what}: length {length} is too short; the prompt without filler already takes {base} "
                        f"tokens (use a length of at least {int(base / MIN_FILL) + 1})")
    lo, lo_tokens, hi = 0, base, 1
    while True:
        t = tokens_of(hi)
        if t > length:
            break
        lo, lo_tokens, hi = hi, t, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        t = tokens_of(mid)
        if t <= length:
            lo, lo_tokens = mid, t
        else:
            hi = mid
    if lo_tokens < MIN_FILL * length:
        raise UserError(f"{what}: cannot fill length {length} to within 5% (got {lo_tokens} tokens; one filler "
                        f"unit is too coarse for this tokenizer); use a longer length")
    return lo, lo_tokens


# ---- answer parsing and scoring ---------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_NUMBERING = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•])\s+")


def extract_answer(text: str | None) -> str:
    """The text inside the first ``<answer>...</answer>`` (closing tag optional); the whole text without a tag."""
    if not text:
        return ""
    low = text.lower()
    i = low.find(_TAG_OPEN)
    if i >= 0:
        text, low = text[i + len(_TAG_OPEN):], low[i + len(_TAG_OPEN):]
    j = low.find(_TAG_CLOSE)
    return (text[:j] if j >= 0 else text).strip()


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def split_items(text: str | None, keyed: bool = False) -> list[str]:
    """Answer items: the extracted answer split on commas, semicolons and new lines; numbering dropped;
    normalized; empty items removed. ``keyed``: an item ``QUERY: ANSWER`` counts as ``ANSWER``."""
    items = re.split(r"[,;\n]", extract_answer(text))
    if keyed:
        items = [it.rsplit(":", 1)[-1] for it in items]
    out = [normalize(_NUMBERING.sub("", it)) for it in items]
    return [it for it in out if it]


def iou(pred: list[str], gold: list[str]) -> float:
    """Intersection over union of two sets of items (0 when both are empty: an empty answer never scores)."""
    p, g = set(pred), set(gold)
    return len(p & g) / len(p | g) if p | g else 0.0


def positional_hits(pred: list[str], gold: list[str]) -> list[bool]:
    """Whether item ``i`` of the prediction equals item ``i`` of the gold list, for each gold item."""
    return [i < len(pred) and pred[i] == g for i, g in enumerate(gold)]


def fraction_correct(pred: list[str], gold: list[str]) -> float:
    """Positional accuracy: the share of :func:`positional_hits`."""
    hits = positional_hits(pred, gold)
    return sum(hits) / len(hits) if hits else 0.0


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 of two normalized strings (the SQuAD v1.1 evaluation script's; no dependency ships it)."""
    p, g = pred.split(), gold.split()
    common = sum(min(p.count(w), g.count(w)) for w in set(p) & set(g))
    if not p or not g or common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)
