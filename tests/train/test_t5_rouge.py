import pytest
from rouge_score import rouge_scorer

from leanformer.finetune_tasks.natural_instructions import format_source
from leanformer.finetune_tasks.rouge import exact_match, rouge_l, rouge_l_max
from leanformer.finetune_tasks.shakespeare import speeches

# (prediction, references) in the shape of Super-NaturalInstructions test instances.
PAIRS = [
    ("The cats are running quickly.", ["the cat runs quickly"]),
    ("The students were studying", ["a student studies", "Students study."]),
    ("positive", ["Positive", "pos"]),
    ("This film is amazingly good!", ["The movie was amazing", "an amazing film"]),
    ("Who wrote Hamlet? Shakespeare did.", ["William Shakespeare"]),
    ("No", ["Yes"]),
    ("", ["empty prediction"]),
    ("Café au lait, naïve résumé", ["cafe au lait naive resume"]),
]


def test_rouge_l_hand_values_with_porter_stems():
    # rouge-score tokens: "the cat are run quickli" / "the cat run quickli": LCS 4, P = 4/5, R = 1.
    assert rouge_l("The cats are running quickly.", "the cat runs quickly") == pytest.approx(8 / 9)
    # "the student were studi" / "a student studi": LCS 2, P = 2/4, R = 2/3 (no common token without stemming).
    assert rouge_l("The students were studying", "a student studies") == pytest.approx(4 / 7)
    # LCS("the cat sat on the mat", "the cat on the mat") = 5: P = 5/6, R = 1.
    assert rouge_l("The cat sat on the mat.", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    # An empty side scores 0, both empty included; characters outside [a-z0-9] split tokens ("caf" + "e" here).
    assert rouge_l("", "x") == 0.0 and rouge_l("!!", "") == 0.0
    assert rouge_l("Café", "caf") == 1.0
    assert rouge_l_max("Romeo", ["Juliet", "romeo"]) == 1.0


def test_rouge_l_is_the_super_natural_instructions_scorer():
    """SNI's compute_metrics.py: RougeScorer(['rougeL'], use_stemmer=True), F-measure, max over references; the
    benchmark score is the mean in percent."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [max(scorer.score(target=r, prediction=p)["rougeL"].fmeasure for r in refs) for p, refs in PAIRS]
    ours = [rouge_l_max(p, refs) for p, refs in PAIRS]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert [rouge_l(p, refs[0]) for p, refs in PAIRS] == pytest.approx(
        [scorer.score(refs[0], p)["rougeL"].fmeasure for p, refs in PAIRS], abs=1e-12)
    # Per pair: 8/9; "Students study." -> student studi, LCS 2 of 4 and 2: 2/3; 1; "an amazing film" -> an amaz
    # film vs thi film is amazingli good, LCS 1 of 5 and 3: 1/4; LCS 1 of 5 and 2: 2/7; 0; 0; "caf au lait na ve r
    # sum" vs "cafe au lait naiv resum", LCS 2 of 7 and 5: 1/3.
    assert 100 * sum(ours) / len(ours) == pytest.approx(100 * (8 / 9 + 2 / 3 + 1 + 1 / 4 + 2 / 7 + 1 / 3) / 8)


def test_exact_match_normalises_like_super_natural_instructions():
    assert exact_match("The answer.", ["nope", "the  ANSWER"])
    assert not exact_match("answers", ["answer"])  # no stemming in exact match
    assert exact_match("don't", ["dont"]) and not exact_match("a cat", ["cat"])  # articles are kept


def test_tk_instruct_prompt_format():
    task = {"Definition": ["Answer the question"], "Positive Examples": [
        {"input": "1+1?", "output": "2"}, {"input": "2+2", "output": "4"}, {"input": "x", "output": "y"}]}
    src = format_source(task, "3+3")
    assert src == ("Definition: Answer the question.\n\n Positive Example 1 -\nInput: 1+1?\n Output: 2.\n"
                   " Positive Example 2 -\nInput: 2+2.\n Output: 4.\nNow complete the following example -\n"
                   "Input: 3+3.\nOutput: ")


def test_speeches_parse_speakers_and_drop_stage_directions():
    md = "# Play\n\n### SCENE I. A hall.\n\n_Enter A_\n\n**FIRST LORD**  \nHail!  \nAll hail.\n\n*Exit*\n\n**B**  \nNo."
    assert speeches(md) == [[("First Lord", ["Hail!", "All hail."]), ("B", ["No."])]]
