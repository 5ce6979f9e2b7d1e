"""The reference-checkpoint data mixture: deterministic batches, training seeds disjoint from evaluation seeds, and
sequences laid out exactly as the harness feeds prompts (prompt, then '<answer>', then the gold answer)."""

import numpy as np

from leanformer.data import ByteTokenizer
from leanformer.reference.mixture import (
    TRAIN_SEED_BASE,
    MixtureConfig,
    batch_plan,
    is_training_seed,
    make_batch,
    task_sequence,
)
from leanformer.tasks import TASKS

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
