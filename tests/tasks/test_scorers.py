"""Scorers on hand-written predictions: partial credit, leniency (case, articles, whitespace, numbering, missing
closing tag) and zero for empty or unparsable answers."""

from __future__ import annotations

import pytest

from leanformer.tasks import TASKS
from leanformer.tasks.base import Sample, extract_answer, iou, normalize, split_items, token_f1


def _sample(name: str, answer) -> Sample:
    return Sample(task=name, prompt="", answer=answer, answer_text="", seed=0, length=0, prompt_tokens=0)


def test_parser_is_lenient():
    assert extract_answer("blah <ANSWER> The Red Fox </Answer> more") == "The Red Fox"
    assert extract_answer("<answer>open ended") == "open ended"
    assert extract_answer("no tags here") == "no tags here"
    assert extract_answer(None) == "" and extract_answer("") == ""
    assert normalize("  The  Red,  FOX!  ") == "red fox"
    assert split_items("<answer>1. A Cat;\n2) dog , , - the emu</answer>") == ["cat", "dog", "emu"]
    assert iou(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3) and iou([], []) == 0.0
    assert token_f1("on mat", "mat") == pytest.approx(2 / 3) and token_f1("", "x") == 0.0


def test_niah_partial_credit_in_order_and_key_value_items():
    task, s = TASKS["niah"](), _sample("niah", ["1111111", "2222222", "3333333", "4444444"])
    assert task.score("<answer>1111111, 2222222, 3333333, 4444444</answer>", s) == 1.0
    assert task.score("<answer>1111111, 9999999, 3333333</answer>", s) == 0.5
    assert task.score("<answer>2222222, 1111111, 3333333, 4444444</answer>", s) == 0.5  # order matters
    assert task.score("<answer>foo: 1111111; bar: 2222222; baz: 3333333; qux: 4444444", s) == 1.0
    assert task.score("<answer>none</answer>", s) == 0.0


def test_iou_tasks():
    vt = TASKS["variable_tracking"]()
    s = _sample("variable_tracking", ["ABCDE", "FGHIJ", "KLMNO"])
    assert vt.score("<answer>kLmNo, abcde, VAR FGHIJ</answer>", s) == 1.0
    assert vt.score("<answer>ABCDE, FGHIJ, ZZZZZ</answer>", s) == pytest.approx(2 / 4)
    cw = TASKS["common_words"](n_common=2)
    s = _sample("common_words", ["bora", "kitu"])
    assert cw.score("<answer>Kitu, bora</answer>", s) == 1.0
    assert cw.score("<answer>kitu</answer>", s) == 0.5
    sf = TASKS["story_filtering"]()
    s = _sample("story_filtering", [4, 9, 17])
    assert sf.score("<answer>Chapter 17, chapter 4 and chapter 9</answer>", s) == 1.0
    assert sf.score("<answer>4, 9</answer>", s) == pytest.approx(2 / 3)
    assert sf.score("<answer>none of them</answer>", s) == 0.0


def test_qa_exact_for_speakers_and_f1_for_records():
    qa = TASKS["qa"]()
    s = _sample("qa", ["MARK ANTONY"])
    assert qa.score("<answer>mark antony</answer>", s) == 1.0
    assert qa.score("<answer>Antony</answer>", s) == 0.0
    rec = TASKS["qa"](records=[{"context": "x y", "question": "q", "answers": ["on the mat"]}])
    s = _sample("qa", ["on the mat", "the mat"])
    assert rec.score("<answer>The mat</answer>", s) == 1.0  # best over the gold answers
    assert rec.score("<answer>mat by the door</answer>", s) == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))


def test_story_retrieval_and_multihop():
    sr = TASKS["story_retrieval"]()
    s = _sample("story_retrieval", ["Misty Harbor", "Ada Blake", "shiny copper kettle"])
    assert sr.score("<answer>the misty harbor, Ada Blake, a Shiny Copper Kettle</answer>", s) == 1.0
    assert sr.score("<answer>Misty Harbor, Bo Blake, shiny copper kettle</answer>", s) == pytest.approx(2 / 3)
    keyed = ("<answer>(1) location in chapter 2: The Misty Harbor, (2) character in chapter 5: Bo Blake, (3) item in "
             "chapter 1: shiny copper kettle</answer>")
    assert sr.score(keyed, s) == pytest.approx(2 / 3)  # 'QUERY: ANSWER' items count as ANSWER
    assert split_items("<answer>a: b: Cat, dog</answer>", keyed=True) == ["cat", "dog"]
    assert split_items("<answer>a: b: Cat, dog</answer>") == ["b cat", "dog"]  # colons are punctuation otherwise
    mh = TASKS["story_multihop"]()
    s = _sample("story_multihop", "worn leather saddle")
    assert mh.score("<answer>The worn leather saddle.</answer>", s) == 1.0
    assert mh.score("<answer>worn leather</answer>", s) == 0.0


def test_bad_parameters_are_config_errors():
    from leanformer.errors import ConfigError

    with pytest.raises(ConfigError, match="n_queries"):
        TASKS["niah"](n_needles=2, n_queries=3)
    with pytest.raises(ConfigError, match="qa.source"):
        TASKS["qa"](source="wikipedia")
