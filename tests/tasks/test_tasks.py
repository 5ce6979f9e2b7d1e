"""Every task: registry, determinism, length bounds (byte and BPE tokenizers), question before and after the
context, and a rule-based solver that reads only the prompt and must score 1.0 (so answers are derivable)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from leanformer import tasks
from leanformer.errors import UserError
from leanformer.tasks import TASKS

NAMES = ["niah", "variable_tracking", "common_words", "qa", "story_retrieval", "story_multihop", "story_filtering"]


def _question(prompt: str) -> str:
    """The question line: the line after the intro paragraph."""
    return prompt.split("\n\n")[1]


def solve_niah(prompt: str) -> str:
    keys = re.split(r", | and ", re.search(r"values for the keys (.+)\?", _question(prompt)).group(1))
    values = [re.search(rf"The value for key {k} is: (\d+)\.", prompt).group(1) for k in keys]
    return f"<answer>{', '.join(values)}</answer>"


def solve_variable_tracking(prompt: str) -> str:
    value = re.search(r"assigned the value (\d+)", _question(prompt)).group(1)
    bound, changed = {value}, True
    pairs = re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)\.", prompt)
    while changed:
        changed = False
        for lhs, rhs in pairs:
            rhs = rhs.removeprefix("VAR ")
            if rhs in bound and lhs not in bound:
                bound.add(lhs)
                changed = True
    return f"<answer>{', '.join(sorted(bound - {value}))}</answer>"


def solve_common_words(prompt: str) -> str:
    n = int(re.search(r"What are the (\d+) most common", prompt).group(1))
    counts = Counter(re.findall(r"^\d+\. (\w+)$", prompt, re.M))
    top = counts.most_common(n + 1)
    assert top[n - 1][1] > top[n][1], "common words must be strictly more frequent than rare ones"
    return f"<answer>{', '.join(w for w, _ in top[:n])}</answer>"


def solve_qa(prompt: str) -> str:
    m = re.search(r'Question about document (\d+): Who speaks the line "(.+)"\?', prompt)
    doc, line = m.group(1), m.group(2)
    block = prompt.split(f"Document {doc} (", 1)[1].split("\n\n", 1)[0]
    speaker = None
    for row in block.splitlines():
        head = re.fullmatch(r"\*\*(.+)\*\*", row)
        if head:
            speaker = head.group(1)
        elif row == line:
            return f"<answer>{speaker}</answer>"
    raise AssertionError("line not found in its document")


def _chapters(prompt: str) -> dict[int, dict]:
    out = {}
    for m in re.finditer(r"Chapter (\d+)\.\nThe traveller arrived at the (.+?)\. There the traveller met (.+?), who",
                         prompt):
        body = prompt[m.end():].split("\n\nChapter ", 1)[0]
        bought = re.search(r"the traveller bought an? (.+?)\.", body)
        out[int(m.group(1))] = {"location": m.group(2), "character": m.group(3),
                                "item": bought.group(1) if bought else None}
    return out


def solve_story_retrieval(prompt: str) -> str:
    ch = _chapters(prompt)
    asks = re.findall(r"\(\d+\) (location|character|item) in chapter (\d+)", _question(prompt))
    return f"<answer>{', '.join(ch[int(k)][a] for a, k in asks)}</answer>"


def solve_story_multihop(prompt: str) -> str:
    ch = _chapters(prompt)
    asked = re.search(r"right before buying the (.+)\?", _question(prompt)).group(1)
    k = next(k for k, c in ch.items() if c["item"] == asked)
    return f"<answer>{ch[max(j for j in ch if j < k and ch[j]['item'])]['item']}</answer>"


def solve_story_filtering(prompt: str) -> str:
    return f"<answer>{', '.join(str(k) for k, c in _chapters(prompt).items() if c['item'] is None)}</answer>"


SOLVERS = {name: globals()[f"solve_{name}"] for name in NAMES}


def test_registry_is_the_documented_set():
    assert list(TASKS) == NAMES
    for name, cls in TASKS.items():
        task = cls()
        assert task.name == name and getattr(tasks, cls.__name__) is cls and cls.__name__ in tasks.__all__
    with pytest.raises(UserError, match="unknown task 'nope'.*niah"):
        tasks.get_task("nope")


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_seed_dependent(name, byte):
    a, b = TASKS[name]().generate(byte, 4001, 7), TASKS[name]().generate(byte, 4001, 7)
    c = TASKS[name]().generate(byte, 4001, 8)
    assert (a.prompt, a.answer, a.answer_text) == (b.prompt, b.answer, b.answer_text)
    assert c.prompt != a.prompt


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tok,lengths", [("byte", (4999, 7777)), ("bpe", (1501, 3333))])
def test_length_question_and_solver(name, tok, lengths, request):
    tokenizer = request.getfixturevalue(tok)
    task = TASKS[name]()
    for length in lengths:
        for seed in (0, 1):
            s = task.generate(tokenizer, length, seed)
            n = len(tokenizer.encode(s.prompt))
            assert 0.95 * length <= n <= length and n == s.prompt_tokens
            q = _question(s.prompt)
            assert s.prompt.count(q) == 2 and s.prompt.rstrip().splitlines()[-2] == q
            assert task.score(s.answer_text, s) == 1.0
            assert task.score(SOLVERS[name](s.prompt), s) == 1.0
            assert task.score("", s) == 0.0 and task.score("<answer></answer>", s) == 0.0
            assert task.score("<answer>no idea at all</answer>", s) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_too_short_length_is_a_user_error(name, byte):
    with pytest.raises(UserError, match="too short"):
        TASKS[name]().generate(byte, 40, 0)


def test_longer_contexts_hold_more_filler_and_more_chapters(byte):
    short, long = (TASKS["story_retrieval"]().generate(byte, n, 3) for n in (4001, 16001))
    assert len(re.findall(r"^Chapter \d+\.$", long.prompt, re.M)) > len(re.findall(r"^Chapter \d+\.$", short.prompt,
                                                                                   re.M))
    a, b = (TASKS["niah"]().generate(byte, n, 3) for n in (2001, 8001))
    assert a.answer == b.answer and b.meta["filler_units"] > 3 * a.meta["filler_units"]


def _lines_per_chapter(prompt: str) -> list[int]:
    bodies = re.split(r"\n\nChapter \d+\.\n", prompt.split("\n\nChapter 1.\n", 1)[1])
    return [sum(1 for line in b.splitlines() if line.startswith('"') or " said " in line or " asked " in line)
            for b in bodies]


@pytest.mark.parametrize("name", ["story_retrieval", "story_multihop", "story_filtering"])
def test_uneven_chapters_spread_the_filler_unevenly_and_keep_the_task_exact(name, byte):
    even, uneven = TASKS[name](), TASKS[name](uneven_chapters=True)
    for seed in (0, 1):
        a, b = even.generate(byte, 9000, seed), uneven.generate(byte, 9000, seed)
        assert (b.prompt, b.answer) == (uneven.generate(byte, 9000, seed).prompt, b.answer)  # deterministic
        ca, cb = _lines_per_chapter(a.prompt), _lines_per_chapter(b.prompt)
        assert max(ca) - min(ca) <= 1  # even: chapters at most one conversation line apart
        assert max(cb) >= 3 * max(1, min(cb)), cb  # uneven: a long chapter is several times a short one
        assert 0.95 * 9000 <= len(byte.encode(b.prompt)) <= 9000
        assert uneven.score(b.answer_text, b) == 1.0 and uneven.score(SOLVERS[name](b.prompt), b) == 1.0


def test_uneven_chapter_counts_only_grow_with_the_filler(byte):
    import random

    task = TASKS["story_retrieval"](uneven_chapters=True)
    plan = task.plan(random.Random(5), 6000, lambda t: len(t.encode()))
    prev = task.lines_per_chapter(plan, 0)
    for n in range(1, 200):
        counts = task.lines_per_chapter(plan, n)
        assert sum(counts) == n and all(c >= p for c, p in zip(counts, prev))
        prev = counts
    assert TASKS["story_retrieval"]().generate(byte, 4001, 7).prompt == TASKS["story_retrieval"](
        uneven_chapters=False).generate(byte, 4001, 7).prompt


def test_uneven_chapters_enter_the_cell_key_only_when_on():
    assert TASKS["story_retrieval"]().params() == {"n_queries": 16}
    assert TASKS["story_retrieval"](uneven_chapters=True).params() == {"n_queries": 16, "uneven_chapters": True}
