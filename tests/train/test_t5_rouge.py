import pytest

from leanformer.finetune_tasks.natural_instructions import format_source
from leanformer.finetune_tasks.rouge import rouge_l, rouge_l_max
from leanformer.finetune_tasks.shakespeare import speeches


def test_rouge_l_hand_values():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5: P = 5/6, R = 1
    assert rouge_l("The cat sat on the mat.", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    assert rouge_l("", "x") == 0.0 and rouge_l("!!", "") == 1.0
    assert rouge_l_max("Romeo", ["Juliet", "romeo"]) == 1.0


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
