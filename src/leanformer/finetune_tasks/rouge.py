"""Rouge-L (Lin, 2004): F-measure of the longest common subsequence of tokens, as Super-Natural-Instructions scores
generations (``rouge_score``'s tokenizer: lowercase, runs of ``[a-z0-9]``; best over the references).

Difference from ``rouge_score``: no Porter stemming (it needs nltk-style rules; scores can be a little lower).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F1 in [0, 1]; an empty side scores 0 (1 when both are empty)."""
    p, r = tokenize(prediction), tokenize(reference)
    if not p or not r:
        return float(not p and not r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def rouge_l_max(prediction: str, references) -> float:
    """Best Rouge-L over the references (Super-NaturalInstructions' ``metric_max_over_ground_truths``)."""
    return max(rouge_l(prediction, r) for r in references)
