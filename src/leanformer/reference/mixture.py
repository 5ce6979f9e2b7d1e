"""Training data for the reference checkpoints: Shakespeare language modelling mixed with task-suite samples.

Every batch is a pure function of ``(seed, step)``: its length bucket, its kind (Shakespeare windows, task samples,
copy sequences — random tokens whose second half repeats chunks of the first, which teach induction-style copying —
associative recall — key-value pairs queried again, which teach matching a key, some queries optionally asked
backwards by value — or assignment drills, variable_tracking's statements asked backwards many times a row), which
tasks and which sample seeds. Task samples use seeds ``TRAIN_SEED_BASE + ...``, far above any seed an evaluation uses
(the harness uses ``seed + i`` with small ``seed``; :func:`is_training_seed` tells them apart and a test checks that
the two never overlap).

A task sample becomes ``encode(prompt) + encode("<answer>") + encode(items + "</answer>") + [eos]`` — exactly the
tokens the harness feeds (:class:`leanformer.eval.generation.PromptEncoder`, chat template off) followed by the gold
continuation, so the model learns the format it is evaluated in (``answer_space`` puts a space before the items,
which the scorers ignore, so that an item's first word is tokenized as it appears in the prompt).
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from leanformer.config import cfg
from leanformer.errors import ConfigError, UserError

TRAIN_SEED_BASE = 1_000_000_000
ANSWER_PREFIX = "<answer>"


def is_training_seed(seed: int) -> bool:
    return seed >= TRAIN_SEED_BASE


@dataclasses.dataclass(kw_only=True)
class MixtureConfig:
    """What the reference model trains on. Lengths are prompt lengths in tokens of the trained tokenizer."""

    lengths: list[int] = cfg(default_factory=lambda: [1024, 2048, 4096, 8192])
    tokens_per_batch: int = cfg(65536, ge=1024, help="sequences per batch = tokens_per_batch // bucket length")
    shakespeare_fraction: float = cfg(0.25, ge=0.0, le=1.0, help="share of batches that are Shakespeare windows")
    copy_fraction: float = cfg(0.0, ge=0.0, le=1.0,
                               help="share of batches that are random token sequences repeated twice (loss on the "
                                    "repeat): they teach copying by induction, which every retrieval task needs")
    recall_fraction: float = cfg(0.0, ge=0.0, le=1.0,
                                 help="share of batches that are multi-query associative recall (random key-value "
                                      "pairs, then keys queried again, loss on their values): they teach matching a "
                                      "queried key, the step after copying that needle tasks need")
    recall_reverse: float = cfg(0.0, ge=0.0, le=1.0,
                                help="share of associative-recall queries asked backwards: a value, then the key "
                                     "written before it (the reverse lookup that variable_tracking starts with: "
                                     "the variable before a named value)")
    lookup_fraction: float = cfg(0.0, ge=0.0, le=1.0,
                                 help="share of batches that are assignment drills: rows of variable_tracking's "
                                      "statements ('VAR NAME = VALUE.', 'VAR NAME = VAR OTHER.') packed together, "
                                      "then its lookups asked many times a row ('VALUE: NAME,'), loss on the names: "
                                      "the variable written before a named value, in the task's own tokens")
    tasks: dict = cfg(default_factory=lambda: {"niah": 1.0, "variable_tracking": 1.0, "common_words": 0.5,
                                               "qa": 0.5, "story_retrieval": 1.5, "story_multihop": 1.5,
                                               "story_filtering": 1.5})
    answer_margin: int = cfg(160, ge=8, help="room after the prompt for '<answer>', the answer and EOS")
    copy_warmup_steps: int = cfg(0, ge=0, help="the first steps are copy batches only: retrieval is learned fast "
                                              "once the model can copy by content, and hardly before")
    copy_warmup_lengths: list[int] = cfg(
        default_factory=list, help="row widths of the warm-up's copy batches, in stages of equal steps (e.g. "
                                   "[64, 128, 256, 512]; empty: the usual lengths plus the answer margin): copying "
                                   "by content is learned far sooner in short rows, and carries over as they grow")
    answer_only: bool = cfg(False, help="task samples: loss on the answer tokens only (the prompt is context)")
    answer_space: bool = cfg(False, help="write the gold answer after '<answer>' with a leading space, so its first "
                                         "word is tokenized as it is in the prompt (' Rosa', not 'Rosa')")
    keyed_answers: bool = cfg(False, help="task samples whose task has a keyed form (niah, story_retrieval) are "
                                          "answered item by item as 'QUERY: ANSWER' (Task.keyed_items), which their "
                                          "scorers accept: copy the query, then look it up (mind answer_margin)")
    chain_answers: bool = cfg(False, help="task samples whose task has a chained form (story_multihop, "
                                          "variable_tracking) write out their lookups one step at a time, 'KEY: "
                                          "VALUE, VALUE: NEXT, ...' (Task.chain_items), which their scorers accept")
    chain_tasks: list[str] = cfg(default_factory=list,
                                 help="with chain_answers, the tasks answered in their chained form (empty: every "
                                      "task that has one), e.g. [variable_tracking] to leave story_multihop's "
                                      "answers plain")
    task_params: dict = cfg(default_factory=dict,
                            help="per task, parameters of its generator for the training samples, e.g. "
                                 "{story_retrieval: {uneven_chapters: true}}; evaluation always uses the defaults")
    short_lengths: list[int] = cfg(default_factory=list,
                                   help="curriculum: bucket lengths of the first short_steps steps (empty: none)")
    short_steps: int = cfg(0, ge=0, help="curriculum: steps drawn from short_lengths before lengths take over")

    def __post_init__(self):
        shares = self.shakespeare_fraction + self.copy_fraction + self.recall_fraction + self.lookup_fraction
        if shares > 1.0 + 1e-9:
            raise ConfigError(f"mixture: shakespeare_fraction + copy_fraction + recall_fraction + lookup_fraction = "
                              f"{shares:g} > 1; their sum is the share of batches that are not task samples")
        for name, params in self.task_params.items():
            if name not in self.tasks:
                raise ConfigError(f"mixture.task_params: {name!r} is not a task of the mixture; its tasks are "
                                  f"{', '.join(self.tasks)}")
            if not isinstance(params, dict):
                raise ConfigError(f"mixture.task_params.{name}: {params!r} is not a mapping of parameters")
            try:
                self.task(name)
            except UserError as e:
                raise ConfigError(f"mixture.task_params.{name}: {e}") from None
        unknown = [t for t in self.chain_tasks if t not in self.tasks]
        if unknown:
            raise ConfigError(f"mixture.chain_tasks: {unknown} not among the mixture's tasks "
                              f"({', '.join(self.tasks)})")
        short = [w for w in self.copy_warmup_lengths if w < 16]
        if short:
            raise ConfigError(f"mixture.copy_warmup_lengths: {short} too short; copy rows need at least 16 tokens "
                              "(half random tokens, half chunks copied from them)")

    def task(self, name: str):
        """Task ``name``'s generator for training samples (with its ``task_params``)."""
        from leanformer.tasks import get_task

        return get_task(name, **self.task_params.get(name, {}))


class ApproxCounter:
    """Counts tokens as UTF-8 bytes / ``bytes_per_token``: lets a task fit its filler without re-tokenizing the
    prompt a dozen times (training data only; evaluation always fits with the real tokenizer)."""

    def __init__(self, bytes_per_token: float):
        self.bytes_per_token = bytes_per_token

    def encode(self, text: str) -> range:
        return range(int(len(text.encode("utf-8")) / self.bytes_per_token))

    def decode(self, ids) -> str:
        raise NotImplementedError("ApproxCounter only counts")


def bytes_per_token(task, tokenizer, length: int = 2048, seed: int = TRAIN_SEED_BASE - 1) -> float:
    """Calibrate :class:`ApproxCounter` for one task: bytes per real token of one sample."""
    prompt = task.generate(tokenizer, length, seed).prompt
    return len(prompt.encode("utf-8")) / max(1, len(tokenizer.encode(prompt)))


def task_sequence(task, tokenizer, length: int, seed: int, counter: ApproxCounter | None = None,
                  answer_space: bool = False, keyed: bool = False, chain: bool = False) -> tuple[list[int], int]:
    """Token ids of prompt + answer prefix + gold answer + EOS, and the index where the answer prefix starts.
    ``keyed``: the gold answer in its keyed form where the task has one (:meth:`Task.keyed_items`); ``chain``: in
    its chained form where the task has one (:meth:`Task.chain_items`).

    With ``counter`` the filler is fitted by approximate counts (the prompt lands within a few % of ``length``).
    ``counters`` in :func:`make_batch` are keyed by ``(task name, length)``."""
    sample = task.generate(counter or tokenizer, length, seed)
    prompt = list(tokenizer.encode(sample.prompt))
    text = sample.answer_text
    if keyed:
        text = sample.meta.get("keyed_answer_text", text)
    if chain:
        text = sample.meta.get("chain_answer_text", text)
    answer = text[len(ANSWER_PREFIX):] if text.startswith(ANSWER_PREFIX) else text
    ids = prompt + list(tokenizer.encode(ANSWER_PREFIX)) + list(tokenizer.encode(" " * answer_space + answer))
    if getattr(tokenizer, "eos_id", None) is not None:
        ids.append(tokenizer.eos_id)
    return ids, len(prompt)


def batch_plan(mix: MixtureConfig, seed: int, step: int) -> dict:
    """Which kind of batch step ``step`` is, its bucket length and, for task batches, (task, sample seed) pairs."""
    rng = random.Random(f"reference-mixture:{seed}:{step}")
    length = rng.choice(mix.short_lengths if step < mix.short_steps and mix.short_lengths else mix.lengths)
    warmup = step < mix.copy_warmup_steps
    if warmup and mix.copy_warmup_lengths:
        width = mix.copy_warmup_lengths[step * len(mix.copy_warmup_lengths) // mix.copy_warmup_steps]
        return {"kind": "copy", "length": width, "width": width, "n": max(1, mix.tokens_per_batch // width),
                "tokens_seed": rng.randrange(2**31)}
    n = max(1, mix.tokens_per_batch // (length + mix.answer_margin))
    u = rng.random()
    if not warmup and u < mix.shakespeare_fraction:
        return {"kind": "shakespeare", "length": length, "n": n, "offsets_seed": rng.randrange(2**31)}
    if warmup or u < mix.shakespeare_fraction + mix.copy_fraction:
        return {"kind": "copy", "length": length, "n": n, "tokens_seed": rng.randrange(2**31)}
    if u < mix.shakespeare_fraction + mix.copy_fraction + mix.recall_fraction:
        return {"kind": "recall", "length": length, "n": n, "tokens_seed": rng.randrange(2**31)}
    if u < mix.shakespeare_fraction + mix.copy_fraction + mix.recall_fraction + mix.lookup_fraction:
        return {"kind": "lookup", "length": length, "n": n, "tokens_seed": rng.randrange(2**31)}
    names = list(mix.tasks)
    weights = [mix.tasks[k] for k in names]
    picks = rng.choices(names, weights=weights, k=n)
    seeds = [TRAIN_SEED_BASE + step * 4096 + i for i in range(n)]
    return {"kind": "tasks", "length": length, "n": n, "items": list(zip(picks, seeds))}


def _random_rows(n: int, width: int, vocab_size: int, specials: list, rng: np.random.Generator):
    """The non-special token ids, and ``[n, width]`` tokens drawn uniformly from them."""
    regular = np.setdiff1d(np.arange(vocab_size), [s for s in specials if s is not None])
    return regular, regular[rng.integers(0, len(regular), size=(n, width))]


def copy_rows(n: int, width: int, vocab_size: int, specials: list, rng: np.random.Generator,
              chunk: tuple[int, int] = (8, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Rows of random (non-special) tokens whose second half is made of chunks copied from random places in the
    first half; ``learn[t]`` marks the tokens a copy predicts (every chunk token but its first). Chunk lengths and
    source offsets vary, so the only way to predict the repeat is by content (an induction head), not by a fixed
    distance."""
    regular, ids = _random_rows(n, width, vocab_size, specials, rng)
    learn = np.zeros((n, width), dtype=bool)
    half = width // 2
    lo, hi = min(chunk[0], half - 1), min(chunk[1], half - 1)
    for r in range(n):
        t = half
        while t < width - 1:
            c = min(int(rng.integers(lo, hi + 1)), width - t)
            a = int(rng.integers(0, half - c + 1))
            ids[r, t:t + c] = ids[r, a:a + c]
            learn[r, t + 1:t + c] = True
            t += c
    return ids, learn


def recall_rows(n: int, width: int, vocab_size: int, specials: list, rng: np.random.Generator,
                key_len: int = 2, value_len: int = 3, reverse: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Multi-query associative recall (the MQAR task of *Zoology*, Arora et al., 2023): the first half of a row is
    ``key value`` pairs of random tokens (keys distinct), the second half queries them again in random order, each
    query followed by its value; ``learn[t]`` marks the queried values' tokens. Predicting them needs what needle
    tasks need: find the queried key earlier in the row and copy what follows it.

    ``reverse``: the share of queries asked backwards, ``value key`` (values then distinct too; ``learn`` marks the
    key): find the value and copy what *precedes* it. With 0 the rows are those drawn without the option."""
    regular, ids = _random_rows(n, width, vocab_size, specials, rng)
    learn = np.zeros((n, width), dtype=bool)
    pair = key_len + value_len
    n_pairs = max(1, min((width // 2) // pair, len(regular)))
    for r in range(n):
        first = rng.choice(len(regular), size=n_pairs, replace=False)  # distinct first tokens: distinct keys
        keys = np.concatenate([regular[first][:, None],
                               regular[rng.integers(0, len(regular), size=(n_pairs, key_len - 1))]], 1)
        values = regular[rng.integers(0, len(regular), size=(n_pairs, value_len))]
        if reverse > 0:  # distinct first tokens: a value names its pair as a key does
            values[:, 0] = regular[rng.choice(len(regular), size=n_pairs, replace=False)]
        ids[r, :n_pairs * pair] = np.concatenate([keys, values], 1).reshape(-1)
        t = n_pairs * pair
        while t + pair <= width:
            j = int(rng.integers(n_pairs))
            asked, answer = (values[j], keys[j]) if reverse > 0 and rng.random() < reverse else (keys[j], values[j])
            a = t + len(asked)
            ids[r, t:a], ids[r, a:t + pair] = asked, answer
            learn[r, a:t + pair] = True
            t += pair
    return ids, learn


def lookup_rows(n: int, width: int, tokenizer, pad_id: int, rng: np.random.Generator,
                max_hops: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Assignment drills in variable_tracking's own words: the first half of a row is chains of statements, ``VAR
    NAME = VALUE.`` then ``VAR NEXT = VAR NAME.`` (0 to ``max_hops`` hops a chain, the chains interleaved, each in
    order), the second half asks their steps again in random order, ``VALUE: NAME,`` or ``NAME: NEXT,``, and
    ``learn[t]`` marks the asked names' tokens. Each answer is the variable written *before* what was asked, the
    lookup variable tracking starts with and repeats at every hop. Pieces are encoded one at a time (each starts
    with a space, so it is tokenized as inside a prompt); rows are padded (``pad_id``, not learned) to ``width``."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    ids = np.full((n, width), pad_id, dtype=np.int64)
    learn = np.zeros((n, width), dtype=bool)
    half = width // 2
    for r in range(n):
        row: list[int] = []
        steps: list[tuple[str, str]] = []   # (asked, answer)
        chains: list[list[str]] = []
        seen: set[str] = set()
        stated = 0                          # tokens of the statements so far
        while True:
            value = str(int(rng.integers(10_000, 100_000)))
            if value in seen:
                continue
            chain = []
            # the length is drawn again before each name: a chain of k names grows with probability
            # (max_hops + 1 - k) / (max_hops + 1), so chains of 1 to max_hops + 1 names, short ones more often
            while len(chain) < 1 + int(rng.integers(0, max_hops + 1)):
                name = "".join(rng.choice(letters, 5))
                if name not in seen:
                    seen.add(name)
                    chain.append(name)
            statements = [f" VAR {chain[0]} = {value}."] + [f" VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
            enc = [list(tokenizer.encode(s)) for s in statements]
            stated += sum(map(len, enc))
            if stated > half:
                break
            seen.add(value)
            chains.append(enc)
            steps += list(zip([value, *chain], chain))
        if not chains:
            continue
        # interleave the chains at random, each chain's statements in order
        slots = [c for c, enc in enumerate(chains) for _ in enc]
        rng.shuffle(slots)
        nxt = [0] * len(chains)
        for c in slots:
            row += chains[c][nxt[c]]
            nxt[c] += 1
        mask = [False] * len(row)
        while True:
            asked, answer = steps[int(rng.integers(len(steps)))]
            q, a = list(tokenizer.encode(f" {asked}:")), list(tokenizer.encode(f" {answer},"))
            if len(row) + len(q) + len(a) > width:
                break
            row += q + a
            mask += [False] * len(q) + [True] * (len(a) - 1) + [False]   # the name's tokens, not the comma
        ids[r, :len(row)] = row
        learn[r, :len(row)] = mask
    return ids, learn


def make_batch(plan: dict, mix: MixtureConfig, tokenizer, shakespeare_tokens: np.ndarray, tasks: dict,
               pad_id: int, counters: dict | None = None) -> dict[str, np.ndarray]:
    """``input_ids``/``labels`` of shape ``[n, width]``: ``length + answer_margin`` unless the plan sets ``width``
    (labels -100 on padding)."""
    width = plan.get("width", plan["length"] + mix.answer_margin)
    ids = np.full((plan["n"], width + 1), pad_id, dtype=np.int64)
    valid = np.zeros((plan["n"], width + 1), dtype=bool)
    if plan["kind"] == "shakespeare":
        rng = np.random.default_rng(plan["offsets_seed"])
        starts = rng.integers(0, len(shakespeare_tokens) - width - 1, size=plan["n"])
        for r, s in enumerate(starts):
            ids[r] = shakespeare_tokens[s:s + width + 1]
        valid[:] = True
    elif plan["kind"] in ("copy", "recall"):
        specials = [pad_id, getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)]
        rng = np.random.default_rng(plan["tokens_seed"])
        if plan["kind"] == "copy":
            ids[:], valid[:] = copy_rows(plan["n"], width + 1, tokenizer.vocab_size, specials, rng)
        else:
            ids[:], valid[:] = recall_rows(plan["n"], width + 1, tokenizer.vocab_size, specials, rng,
                                           reverse=mix.recall_reverse)
    elif plan["kind"] == "lookup":
        ids[:], valid[:] = lookup_rows(plan["n"], width + 1, tokenizer, pad_id,
                                       np.random.default_rng(plan["tokens_seed"]))
    else:
        for r, (name, seed) in enumerate(plan["items"]):
            counters = counters or {}
            chain = mix.chain_answers and (not mix.chain_tasks or name in mix.chain_tasks)
            try:
                seq, answer_start = task_sequence(tasks[name], tokenizer, plan["length"], seed,
                                                  counters.get((name, plan["length"])), mix.answer_space,
                                                  mix.keyed_answers, chain)
            except UserError:  # the length is too short for this task in this tokenizer: a needle task instead
                seq, answer_start = task_sequence(tasks["niah"], tokenizer, plan["length"], seed,
                                                  counters.get(("niah", plan["length"])), mix.answer_space,
                                                  mix.keyed_answers, mix.chain_answers)
            seq = seq[:width + 1]
            ids[r, :len(seq)] = seq
            # labels[t] = ids[t + 1]: with answer_only, only targets from the answer prefix on are learned
            valid[r, (answer_start if mix.answer_only else 0):len(seq)] = True
    labels = np.where(valid[:, 1:], ids[:, 1:], -100)
    return {"input_ids": ids[:, :-1], "labels": labels}
