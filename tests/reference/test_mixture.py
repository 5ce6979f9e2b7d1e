"""The reference-checkpoint data mixture: deterministic batches, training seeds disjoint from evaluation seeds, and
sequences laid out exactly as the harness feeds prompts (prompt, then '<answer>', then the gold answer)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from leanformer.data import ByteTokenizer
from leanformer.errors import ConfigError
from leanformer.reference.mixture import (
    TRAIN_SEED_BASE,
    MixtureConfig,
    batch_plan,
    is_training_seed,
    make_batch,
    task_sequence,
)
from leanformer.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
MIX = MixtureConfig(lengths=[700, 800], tokens_per_batch=3000, shakespeare_fraction=0.3,
                    tasks={"niah": 1.0, "common_words": 1.0})


def test_training_seeds_never_meet_evaluation_seeds():
    from leanformer.eval.harness import FrontierConfig

    train_seeds = {seed for step in range(300) for kind in [batch_plan(MIX, 0, step)] if kind["kind"] == "tasks"
                   for _, seed in kind["items"]}
    assert train_seeds and all(is_training_seed(s) for s in train_seeds)
    # The harness uses seed + i for sample i; its default and documented grids start at small seeds.
    c = FrontierConfig(models=["m"], tasks=["niah"], lengths=[700], samples=10_000)
    eval_seeds = set(range(c.seed, c.seed + c.samples))
    assert not train_seeds & eval_seeds and max(eval_seeds) < TRAIN_SEED_BASE


def test_batches_are_a_pure_function_of_seed_and_step():
    tok = ByteTokenizer()
    tasks = {name: TASKS[name]() for name in ("niah", "common_words")}
    shakespeare = np.arange(50_000, dtype=np.int64) % 256
    for step in range(4):
        a = make_batch(batch_plan(MIX, 7, step), MIX, tok, shakespeare, tasks, tok.pad_id)
        b = make_batch(batch_plan(MIX, 7, step), MIX, tok, shakespeare, tasks, tok.pad_id)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert batch_plan(MIX, 7, 1) != batch_plan(MIX, 8, 1)


def test_task_sequence_is_prompt_then_answer_and_answer_only_masks_the_prompt():
    tok = ByteTokenizer()
    task = TASKS["niah"]()
    ids, start = task_sequence(task, tok, 700, TRAIN_SEED_BASE + 3)
    sample = task.generate(tok, 700, TRAIN_SEED_BASE + 3)
    assert tok.decode(ids[:start]) == sample.prompt
    assert tok.decode(ids[start:]) == sample.answer_text and ids[-1] == tok.eos_id
    mix = MixtureConfig(lengths=[700], tokens_per_batch=900, shakespeare_fraction=0.0, tasks={"niah": 1.0},
                        answer_only=True)
    plan = batch_plan(mix, 0, 0)
    batch = make_batch(plan, mix, tok, np.zeros(10, dtype=np.int64), {"niah": task}, tok.pad_id)
    labels = batch["labels"][0]
    kept = labels[labels != -100]
    seq, start = task_sequence(task, tok, 700, plan["items"][0][1])
    assert kept.tolist() == seq[start:] and (labels[:start - 1] == -100).all()


def test_curriculum_draws_short_lengths_first_then_the_full_set():
    mix = MixtureConfig(lengths=[700, 800, 900], short_lengths=[300], short_steps=50, tokens_per_batch=3000)
    early = {batch_plan(mix, 0, step)["length"] for step in range(50)}
    late = {batch_plan(mix, 0, step)["length"] for step in range(50, 150)}
    assert early == {300} and late == {700, 800, 900}


def test_copy_batches_learn_only_tokens_an_induction_head_can_copy():
    tok = ByteTokenizer()
    mix = MixtureConfig(lengths=[100], tokens_per_batch=600, shakespeare_fraction=0.0, copy_fraction=1.0,
                        answer_margin=8)
    plan = batch_plan(mix, 0, 3)
    assert plan["kind"] == "copy"
    b = make_batch(plan, mix, tok, np.zeros(10, dtype=np.int64), {}, tok.pad_id)
    ids, labels = b["input_ids"], b["labels"]
    assert ids.shape == (plan["n"], 108)
    assert not {tok.pad_id, tok.bos_id, tok.eos_id} & set(np.unique(ids).tolist())
    half = (108 + 1) // 2
    assert (labels[:, :half] == -100).all() and (labels[:, half:] != -100).mean() > 0.8
    offsets = set()
    for r, t in zip(*np.nonzero(labels != -100)):
        # the pair (current token, target) occurs earlier in the first half: copying by content predicts it
        src = [a for a in range(half - 1) if ids[r, a] == ids[r, t] and ids[r, a + 1] == labels[r, t]]
        assert src, (r, t)
        offsets.add(t - src[0])
    assert len(offsets) > 5  # copy distances vary: no fixed offset to learn instead of content
    with_copy = dataclasses.replace(MIX, copy_fraction=0.3)
    plans = [batch_plan(with_copy, 5, s) for s in range(60)]
    assert {p["kind"] for p in plans} == {"shakespeare", "copy", "tasks"}
    # batches drawn as Shakespeare stay Shakespeare when copy batches are added (they take the task share)
    assert all(p == batch_plan(MIX, 5, s) for s, p in enumerate(plans) if p["kind"] == "shakespeare")


def test_answer_space_tokenizes_the_first_item_as_in_the_prompt():
    from leanformer.data import HFTokenizer

    tok = HFTokenizer.from_pretrained(ROOT / "src" / "leanformer" / "assets" / "reference")
    task = TASKS["story_retrieval"]()
    sample = task.generate(tok, 1200, TRAIN_SEED_BASE + 11)
    first = list(tok.encode(" " + sample.answer[0]))
    prompt = list(tok.encode(sample.prompt))
    assert any(prompt[i:i + len(first)] == first for i in range(len(prompt)))  # how the prompt spells it
    ids, start = task_sequence(task, tok, 1200, TRAIN_SEED_BASE + 11, answer_space=True)
    items = ids[start + len(tok.encode("<answer>")):]
    assert items[:len(first)] == first
    assert task.score(tok.decode(items), sample) == 1.0  # the scorer ignores the space


def test_shipped_tokenizer_is_what_the_recipe_trains_and_splits_digits(tmp_path):
    from leanformer.data import HFTokenizer
    from leanformer.reference.train import train_tokenizer

    shipped = ROOT / "src" / "leanformer" / "assets" / "reference"
    train_tokenizer(tmp_path, 4096, 0)
    assert (tmp_path / "tokenizer.json").read_bytes() == (shipped / "tokenizer.json").read_bytes()
    tok = HFTokenizer.from_pretrained(shipped)
    for text in (" is: 9217312.", "<answer>9217312, 7244549"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert [tok.decode([i]) for i in ids if tok.decode([i]).isdigit()] == [c for c in text if c.isdigit()]


def test_copy_warmup_steps_are_copy_batches_only():
    mix = dataclasses.replace(MIX, copy_fraction=0.1, copy_warmup_steps=30)
    assert {batch_plan(mix, 2, s)["kind"] for s in range(30)} == {"copy"}
    assert {batch_plan(mix, 2, s)["kind"] for s in range(30, 130)} == {"copy", "shakespeare", "tasks"}


def test_copy_warmup_lengths_grow_in_stages_of_exact_width():
    mix = dataclasses.replace(MIX, copy_fraction=0.5, copy_warmup_steps=40, copy_warmup_lengths=[16, 32])
    warm = [batch_plan(mix, 3, s) for s in range(40)]
    assert [p["width"] for p in warm] == [16] * 20 + [32] * 20
    assert {p["kind"] for p in warm} == {"copy"}
    assert warm[0]["n"] == mix.tokens_per_batch // 16
    b = make_batch(warm[25], mix, ByteTokenizer(), None, None, pad_id=0)
    assert b["input_ids"].shape == (mix.tokens_per_batch // 32, 32)  # no answer margin on warm-up rows
    later = [batch_plan(mix, 3, s) for s in range(40, 140)]
    assert all("width" not in p for p in later) and {p["length"] for p in later} <= set(mix.lengths)
    with pytest.raises(ConfigError, match=r"copy_warmup_lengths: \[8\] too short"):
        dataclasses.replace(MIX, copy_warmup_lengths=[64, 8])


def test_recall_batches_learn_exactly_the_values_of_queried_keys():
    """Associative-recall rows: key-value pairs, then queries; the learned tokens are the queried values, and each
    is what follows the same key in the first half (so only matching the key can predict it)."""
    from leanformer.reference.mixture import recall_rows

    rng = np.random.default_rng(3)
    specials = [0, 1, 2]
    ids, learn = recall_rows(4, 61, 50, specials, rng, key_len=2, value_len=3)
    pairs = (61 // 2) // 5
    for r in range(4):
        assert not np.isin(ids[r], specials).any()
        table = {tuple(ids[r, i * 5:i * 5 + 2]): tuple(ids[r, i * 5 + 2:i * 5 + 5]) for i in range(pairs)}
        assert len(table) == pairs  # keys distinct
        assert not learn[r, :pairs * 5].any()
        t = pairs * 5
        while t + 5 <= 61:
            key, value = tuple(ids[r, t:t + 2]), tuple(ids[r, t + 2:t + 5])
            assert table[key] == value and learn[r, t + 2:t + 5].all() and not learn[r, t:t + 2].any()
            t += 5
        assert not learn[r, t:].any()


def test_reverse_recall_queries_learn_the_key_written_before_the_value():
    """Queries asked backwards give a value, then learn the key that precedes that value in the first half (values
    are then distinct, so only finding the value can predict it); forward queries stay as they were, and with no
    reverse share the rows are the very rows drawn without the option."""
    from leanformer.reference.mixture import recall_rows

    specials = [0, 1, 2]
    args = (6, 201, 200, specials)
    ids, learn = recall_rows(*args, np.random.default_rng(5), key_len=2, value_len=3, reverse=0.5)
    pairs = (201 // 2) // 5
    n_reverse = 0
    for r in range(6):
        keys = {tuple(ids[r, i * 5:i * 5 + 2]): tuple(ids[r, i * 5 + 2:i * 5 + 5]) for i in range(pairs)}
        values = {v: k for k, v in keys.items()}
        assert len(keys) == len(values) == pairs and len({v[0] for v in values}) == pairs
        assert not learn[r, :pairs * 5].any()
        t = pairs * 5
        while t + 5 <= 201:
            if tuple(ids[r, t:t + 2]) in keys and learn[r, t + 2:t + 5].all():  # forward: key, then its value
                assert keys[tuple(ids[r, t:t + 2])] == tuple(ids[r, t + 2:t + 5]) and not learn[r, t:t + 2].any()
            else:  # backwards: value, then the key before it
                assert values[tuple(ids[r, t:t + 3])] == tuple(ids[r, t + 3:t + 5])
                assert learn[r, t + 3:t + 5].all() and not learn[r, t:t + 3].any()
                n_reverse += 1
            t += 5
    assert 0.3 < n_reverse / (6 * ((201 - pairs * 5) // 5)) < 0.7
    plain = recall_rows(*args, np.random.default_rng(5))
    same = recall_rows(*args, np.random.default_rng(5), reverse=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, same))
    mix = dataclasses.replace(MIX, shakespeare_fraction=0.0, copy_fraction=0.0, recall_fraction=1.0,
                              recall_reverse=1.0)
    batch = make_batch(batch_plan(mix, 0, 0), mix, ByteTokenizer(), np.zeros(10, dtype=np.int64), {}, 0)
    labels, inputs = batch["labels"][0], batch["input_ids"][0]
    first = int(np.argmax(labels != -100))  # the first learned key token: predicted after a whole value
    assert first % 5 == 2 and (labels[first:first + 2] != -100).all() and (labels[first - 3:first] == -100).all()
    assert inputs[first] != labels[first]


def test_recall_fraction_draws_recall_batches_and_fractions_must_fit():
    mix = dataclasses.replace(MIX, shakespeare_fraction=0.2, copy_fraction=0.2, recall_fraction=0.3)
    kinds = [batch_plan(mix, 0, s)["kind"] for s in range(400)]
    assert 0.2 < kinds.count("recall") / 400 < 0.4 and "tasks" in kinds and "copy" in kinds
    batch = make_batch(next(batch_plan(mix, 0, s) for s in range(400) if kinds[s] == "recall"), mix, ByteTokenizer(),
                       np.zeros(10, dtype=np.int64), {}, 0)
    assert batch["input_ids"].shape[1] == batch["labels"].shape[1] and (batch["labels"] != -100).any()
    with pytest.raises(ConfigError, match=r"recall_fraction \+ lookup_fraction = 1.1 > 1"):
        MixtureConfig(shakespeare_fraction=0.5, copy_fraction=0.3, recall_fraction=0.3)
    with pytest.raises(ConfigError, match=r"lookup_fraction = 1.05 > 1"):
        MixtureConfig(shakespeare_fraction=0.5, recall_fraction=0.3, lookup_fraction=0.25)


def test_lookup_rows_learn_the_variable_written_before_what_is_asked():
    """Assignment drills: the first half states chains of variables in variable_tracking's words, the second asks
    their steps; the learned tokens are exactly the answers' names, and each is the variable whose statement has the
    asked value or variable on its right (the lookup backwards), with every chain's statements in order."""
    import re

    from leanformer.reference.mixture import lookup_rows

    tok = ByteTokenizer()
    ids, learn = lookup_rows(3, 1200, tok, 0, np.random.default_rng(7))
    hops = set()
    for r in range(3):
        text = bytes(ids[r][ids[r] != 0].tolist()).decode()
        statements, _, rest = text.partition(":")
        statements = statements.rsplit(" ", 1)[0]          # the first query's key is not a statement
        stated = re.findall(r" VAR ([A-Z]{5}) = (\d{5}|VAR [A-Z]{5})\.", statements)
        assigned = {rhs: lhs for lhs, rhs in stated}
        assert len(assigned) == len(stated) == statements.count("VAR ") - statements.count("= VAR ")  # keys distinct
        assert 400 < len(statements) <= 600                 # the first half of the row
        defined = [lhs for lhs, _ in stated]
        for lhs, rhs in re.findall(r" VAR ([A-Z]{5}) = VAR ([A-Z]{5})\.", statements):
            assert defined.index(rhs) < defined.index(lhs)   # a chain's statements in order
        queries = re.findall(r" (\d{5}|[A-Z]{5}): ([A-Z]{5}),", text[len(statements):])
        assert len(queries) > 30
        learned = bytes(ids[r][learn[r]].tolist()).decode()
        assert learned == "".join(f" {name}" for _, name in queries)
        for asked, name in queries:
            key = asked if asked.isdigit() else f"VAR {asked}"
            assert assigned[key] == name
            hops.add(asked.isdigit())
    assert hops == {True, False}                             # values and variables are both asked
    mix = dataclasses.replace(MIX, shakespeare_fraction=0.0, lookup_fraction=1.0)
    plan = batch_plan(mix, 0, 0)
    batch = make_batch(plan, mix, tok, np.zeros(10, dtype=np.int64), {}, 0)
    assert plan["kind"] == "lookup" and batch["input_ids"].shape == (plan["n"], plan["length"] + mix.answer_margin)
    assert (batch["labels"] != -100).sum() > 100


@pytest.mark.parametrize("name, length", [("niah", 1500), ("story_retrieval", 9000)])
def test_keyed_answers_lead_each_item_with_its_query_and_still_score_full(name, length):
    tok = ByteTokenizer()
    task = TASKS[name]()
    seed = TRAIN_SEED_BASE + 5
    sample = task.generate(tok, length, seed)
    keyed = sample.meta["keyed_answer_text"]
    assert keyed != sample.answer_text and task.score(keyed, sample) == 1.0
    ids, start = task_sequence(task, tok, length, seed, keyed=True)
    assert tok.decode(ids[:start]) == sample.prompt and tok.decode(ids[start:]) == keyed
    items = keyed[len("<answer>"):-len("</answer>")].split(", ")
    query = items[0].rsplit(":", 1)[0]  # the query part is copied from the prompt as written there
    assert query.split(" ", 1)[-1] in sample.prompt
    mix = MixtureConfig(lengths=[length], tokens_per_batch=length + 1000, shakespeare_fraction=0.0,
                        tasks={name: 1.0}, answer_only=True, keyed_answers=True, answer_margin=1000)  # bytes
    plan = batch_plan(mix, 0, 0)
    batch = make_batch(plan, mix, tok, np.zeros(10, dtype=np.int64), {name: task, "niah": TASKS["niah"]()},
                       tok.pad_id)
    labels = batch["labels"][0]
    seq, start = task_sequence(task, tok, length, plan["items"][0][1], keyed=True)
    assert labels[labels != -100].tolist() == seq[start:]


def test_tasks_without_a_keyed_form_train_on_their_plain_answer():
    tok = ByteTokenizer()
    task = TASKS["variable_tracking"]()
    sample = task.generate(tok, 1500, TRAIN_SEED_BASE + 2)
    assert "keyed_answer_text" not in sample.meta
    assert task_sequence(task, tok, 1500, TRAIN_SEED_BASE + 2, keyed=True) == task_sequence(
        task, tok, 1500, TRAIN_SEED_BASE + 2)


@pytest.mark.parametrize("name", ["story_multihop", "variable_tracking"])
def test_chained_answers_write_each_lookup_and_still_score_full(name):
    """Each step's key is the value written just before it (the first is copied from the question); the steps are
    facts of the prompt; the training row ends in the chain; a chain that ends wrong does not score."""
    tok = ByteTokenizer()
    task = TASKS[name]()
    seed = TRAIN_SEED_BASE + 7
    sample = task.generate(tok, 6000, seed)
    chain = sample.meta["chain_answer_text"]
    assert chain != sample.answer_text and task.score(chain, sample) == 1.0
    steps = [it.split(": ") for it in chain[len("<answer>"):-len("</answer>")].split(", ")]
    assert all(len(st) == 2 for st in steps) and len(steps) >= 2
    for (_, value), (key, _) in zip(steps, steps[1:]):
        assert key == value or key.endswith(f"chapter {int(value.split()[-1]) - 1}")
    question = sample.prompt.rsplit("\n", 2)[-2]
    assert steps[0][0] in question
    if name == "story_multihop":
        (item, chapter), (_, answer) = steps
        number = int(chapter.split()[-1])
        text = sample.prompt.split(f"Chapter {number}.\n")[1].split("\n\nChapter ")[0]
        assert f"the traveller bought a {item}." in text
        before = sample.prompt.split(f"Chapter {number}.\n")[0].rsplit(f"Chapter {number - 1}.\n", 1)[1]
        assert f"the traveller bought a {answer}." in before
        assert task.score(chain.replace(answer, "rusty tin bell"), sample) == 0.0
    else:
        for key, var in steps:
            assert f"VAR {var} = {key if key.isdigit() else 'VAR ' + key}." in sample.prompt
        assert task.score(chain.replace(steps[-1][1], "QQQQQ"), sample) < 1.0
    ids, start = task_sequence(task, tok, 6000, seed, chain=True)
    assert tok.decode(ids[:start]) == sample.prompt and tok.decode(ids[start:]) == chain
    assert task_sequence(task, tok, 6000, seed) != task_sequence(task, tok, 6000, seed, chain=True)


def test_chain_tasks_chain_only_the_tasks_named():
    """With chain_tasks [variable_tracking], its samples end in the chained answer and story_multihop's in the plain
    one, in the same batch; a task the mixture does not draw is refused in one line."""
    tok = ByteTokenizer()
    mix = MixtureConfig(lengths=[3000], tokens_per_batch=20000, shakespeare_fraction=0.0,
                        tasks={"variable_tracking": 1.0, "story_multihop": 1.0}, chain_answers=True,
                        chain_tasks=["variable_tracking"], answer_margin=200)
    plan = next(p for p in (batch_plan(mix, 0, s) for s in range(50))
                if {n for n, _ in p["items"]} == {"variable_tracking", "story_multihop"})
    batch = make_batch(plan, mix, tok, None, {n: TASKS[n]() for n in mix.tasks}, pad_id=0)
    for r, (name, seed) in enumerate(plan["items"]):
        want, _ = task_sequence(TASKS[name](), tok, 3000, seed, chain=name == "variable_tracking")
        assert batch["input_ids"][r, :len(want) - 1].tolist() == want[:-1]
    with pytest.raises(ConfigError, match=r"mixture.chain_tasks: \['qa'\] not among the mixture's tasks"):
        dataclasses.replace(mix, chain_tasks=["qa"])


def test_a_plain_multihop_answer_scores_as_before_the_chained_form():
    task = TASKS["story_multihop"]()
    sample = task.generate(ByteTokenizer(), 3000, 3)
    assert task.score(sample.answer_text, sample) == 1.0
    assert task.score(f"<answer>{sample.answer}, {sample.answer}</answer>", sample) == 0.0
    assert task.score("<answer>rusty tin bell</answer>", sample) == 0.0


def test_task_params_shape_the_training_generators_only():
    mix = MixtureConfig(tasks={"niah": 1.0, "story_retrieval": 1.0},
                        task_params={"story_retrieval": {"uneven_chapters": True, "n_queries": 4}})
    task = mix.task("story_retrieval")
    assert task.uneven_chapters and task.n_queries == 4 and type(mix.task("niah")) is TASKS["niah"]
    sample = task.generate(ByteTokenizer(), 3000, TRAIN_SEED_BASE + 1)
    assert len(sample.answer) == 4 and sample.prompt != TASKS["story_retrieval"]().generate(
        ByteTokenizer(), 3000, TRAIN_SEED_BASE + 1).prompt
    with pytest.raises(ConfigError, match="'qa' is not a task of the mixture.*niah, story_retrieval"):
        MixtureConfig(tasks={"niah": 1.0, "story_retrieval": 1.0}, task_params={"qa": {}})
    with pytest.raises(ConfigError, match="task_params.story_retrieval.*bad parameters.*chapters_uneven"):
        MixtureConfig(tasks={"story_retrieval": 1.0}, task_params={"story_retrieval": {"chapters_uneven": True}})
    with pytest.raises(ConfigError, match="task_params.story_retrieval.*n_queries=0"):
        MixtureConfig(tasks={"story_retrieval": 1.0}, task_params={"story_retrieval": {"n_queries": 0}})
