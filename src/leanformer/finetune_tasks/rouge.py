"""Generation metrics of Super-NaturalInstructions (Wang et al., 2022), as its ``compute_metrics.py`` and nanoT5's
fine-tuning stage compute them, so that scores compare with published ones:

- Rouge-L (Lin, 2004): Google's ``rouge-score`` with ``RougeScorer(["rougeL"], use_stemmer=True)`` and its default
  tokenizer (lowercase, runs of ``[a-z0-9]``, Porter stemming of tokens longer than 3 characters); the F-measure,
  best over the references. nanoT5 reaches the same scorer through Hugging Face ``evaluate.load("rouge")`` with
  ``use_stemmer=True``.
- Exact match: SQuAD-style normalisation without dropping articles (lowercase, ASCII punctuation removed,
  whitespace collapsed), true when any reference matches.
"""

from __future__ import annotations

import functools
import string

from leanformer.errors import UserError


@functools.cache
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("Rouge-L needs the 'rouge-score' package: pip install leanformer[hf]") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure in [0, 1]; 0 when either side has no token."""
    return float(_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


def rouge_l_max(prediction: str, references) -> float:
    """Best Rouge-L F-measure over the references (``score_multi``; SNI's ``metric_max_over_ground_truths``)."""
    return float(_scorer().score_multi(list(references), prediction)["rougeL"].fmeasure)


_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def exact_match(prediction: str, references) -> bool:
    """True when the normalised prediction equals any normalised reference."""
    p = normalize_answer(prediction)
    return any(p == normalize_answer(r) for r in references)
