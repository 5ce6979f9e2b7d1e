"""The long-context reference recipe (configs/reference/long.yaml) and its study grid (configs/frontier/long.yaml),
checked on the CPU at toy scale: the configs validate and agree with each other and with benchmarks/gpu.sh, the
recipe's first two jobs run end to end from the shipped checkpoint, a slice of the study runs and resumes, and the
reference evaluation runs through the inference engine (no ``[B, T, T]`` mask at 32K tokens).
(The real runs: `bash benchmarks/gpu.sh reference-long`, `reference-long-continue`, `frontier-long`.)"""

import json
import re
import shlex
from pathlib import Path

import pytest

from leanformer.config import apply_overrides, from_dict, load_yaml
from leanformer.reference import train as ref_train

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "src" / "leanformer" / "assets" / "reference"
LONG = ROOT / "configs" / "reference" / "long.yaml"
STUDY = ROOT / "configs" / "frontier" / "long.yaml"
DENSE0 = ROOT / "configs" / "frontier" / "long-dense0.yaml"
GPU_SH = (ROOT / "benchmarks" / "gpu.sh").read_text()
needs_shipped = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no reference shipped")


def test_long_recipe_validates_and_its_rows_fit_the_positions():
    for job2 in ([], ["mixture.lengths=[8192, 16384, 32768]"]):
        rc = from_dict(ref_train.ReferenceConfig, apply_overrides(load_yaml(str(LONG)), job2))
        widths = [L + rc.mixture.answer_margin for L in rc.mixture.lengths]
        assert max(widths) <= rc.model.max_seq_len
        # every bucket gets several rows, 32K ones too
        assert min(rc.mixture.tokens_per_batch // w for w in widths) >= 4
    assert max(rc.mixture.lengths) == 32768 and rc.model.rope_theta > 50000.0
    assert {16384, 32768} <= set(rc.eval_lengths) and rc.eval_samples == 64
    # the longest evaluation prompt (the harness adds up to 3 tokens) and its answer fit the positions
    assert max(rc.eval_lengths) + 3 + rc.eval_max_new_tokens <= rc.model.max_seq_len
    shipped = json.loads((SHIPPED / "model.json").read_text())["config"]
    same = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "tie_embeddings")
    assert {k: getattr(rc.model, k) for k in same} == {k: shipped[k] for k in same}  # init_from loads its weights


def test_study_grid_validates_and_names_what_the_gpu_suites_write():
    from leanformer.eval import harness

    c = harness.load_config(load_yaml(str(STUDY)))
    assert c.lengths == [4096, 8192, 16384, 32768] and c.samples >= 24 and c.engine == "on"
    assert len(harness.build_grid(c)) == 5 * 4 * (1 + 8 * 4)
    harness._check_method_params(c, harness.method_pairs(c))
    # the model is the folder the suite reference-long-continue writes (runs/gpu/NAME with OUT unset), and the
    # suite frontier-long runs this config with that model and store
    assert "LOGS=${OUT:-runs/gpu}" in GPU_SH and "ref_job reference-long-continue " in GPU_SH
    assert c.models == ["runs/gpu/reference-long-continue"]
    m = re.search(r"frontier_slice configs/frontier/long.yaml (\S+) (\S+)", GPU_SH)
    assert m and m.group(1) == c.models[0] and Path(c.store).parent == Path(m.group(2))
    # the long reference has the positions the study's longest prompt and answer need
    rc = from_dict(ref_train.ReferenceConfig, load_yaml(str(LONG)))
    assert max(c.lengths) + 3 + c.max_new_tokens <= rc.model.max_seq_len


@needs_shipped
def test_study_slice_runs_on_the_cpu_and_resumes(tmp_path, capsys):
    from leanformer.cli import main

    args = ["frontier", str(STUDY), "models=[leanformer:reference]", "lengths=[1024]", "tasks=[niah]", "samples=1",
            "prefill=[vertical_slash]", "decode=[quest]", "sparsities=[0.5]", "max_new_tokens=4", "device=cpu",
            "dtype=fp32", f"store={tmp_path / 'r.db'}", "progress=false"]
    assert main(args) == 0
    assert "3 cells, 0 samples already done, 3 added" in capsys.readouterr().out
    assert main(args) == 0  # a second slice skips what the first finished
    assert "3 cells, 3 samples already done, 0 added" in capsys.readouterr().out


@needs_shipped
def test_long_jobs_run_from_the_shipped_checkpoint(tmp_path):
    """Job 1 (init_from the shipped model, the new rope base and positions) and job 2 (init_from job 1, its own
    lengths), each one step on toy lengths; the second evaluates and writes the card with both commands."""
    toy = ["--device", "cpu", "--workers", "1", "--no-compile", "mixture.tokens_per_batch=1500", "max_steps=1",
           "warmup_steps=1", "eval_tasks=[niah]", "eval_lengths=[320]", "eval_samples=1", "eval_max_new_tokens=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    ref_train.main(["--config", str(LONG), "--out", str(one), "--skip-eval", *toy, "mixture.lengths=[320]",
                    f"init_from={SHIPPED}"])
    meta = json.loads((one / "model.json").read_text())["config"]
    assert meta["rope_theta"] == 500000.0 and meta["max_seq_len"] == 33152
    ref_train.main(["--config", str(LONG), "--out", str(two), *toy, f"init_from={one}", "mixture.lengths=[400]"])
    report = json.loads((two / "training.json").read_text())
    assert report["training"]["data_step_offset"] == 17320 + 8929 + 1  # the shipped chain's steps, then job 1's
    assert len(report["dense_accuracy"]["niah"]["320"]["scores"]) == 1
    card = (two / "README.md").read_text()
    assert card.count("--config " + str(LONG)) == 2 and "'mixture.lengths=[400]'" in card


@needs_shipped
def test_reference_evaluation_builds_no_square_mask(tmp_path, monkeypatch):
    """Rows of different lengths are evaluated without padding: no attention call gets a ``[.., T, T]`` mask (a
    left-padded batch through ``generate`` does: ~34 GB in bool for 32 rows at 32K tokens)."""
    import torch.nn.functional as F

    rc = from_dict(ref_train.ReferenceConfig, {"eval_tasks": ["story_multihop"], "eval_lengths": [512],
                                               "eval_samples": 3})
    from leanformer.eval.generation import PromptEncoder
    from leanformer.tasks import TASKS
    from leanformer.train.checkpoint import load_tokenizer

    tok = load_tokenizer(SHIPPED)
    enc = PromptEncoder(tok, "off", "<answer>")
    lengths = {len(enc.encode(TASKS["story_multihop"]().generate(tok, 512, s).prompt)) for s in range(3)}
    assert len(lengths) > 1  # the batch mixes prompt lengths
    masks, real = [], F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, *a, **kw):
        if attn_mask is not None:
            masks.append(tuple(attn_mask.shape))
        return real(q, k, v, attn_mask, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    acc = ref_train.evaluate(SHIPPED, rc, "cpu", max_new_tokens=4)
    assert len(acc["story_multihop"]["512"]["scores"]) == 3
    assert [s for s in masks if min(s[-2:]) >= min(lengths)] == []  # decode steps' [B, H, 1, L] masks are linear


@needs_shipped
def test_evaluation_samples_made_by_worker_processes_are_the_same():
    jobs = [("niah", 320, 0), ("story_filtering", 512, 1)]
    here = list(ref_train.eval_samples(SHIPPED, jobs))
    pooled = list(ref_train.eval_samples(SHIPPED, jobs, workers=2))
    assert [(s.prompt, ids) for s, ids in pooled] == [(s.prompt, ids) for s, ids in here]


def test_second_size_is_the_long_reference_three_times_deeper():
    """The suite reference-long-deep grows the long reference to 24 layers (3x its non-embedding parameters) on the
    second job's lengths; its overrides make a valid config whose rows still fit the positions."""
    from leanformer.models.gpt import GPT

    m = re.search(r"ref_job reference-long-deep \\\s+init_from=\S+ (model\.n_layers=\d+) \\\s+'([^']+)'", GPU_SH)
    assert m, "the reference-long-deep suite is missing or changed shape"
    rc = from_dict(ref_train.ReferenceConfig, apply_overrides(load_yaml(str(LONG)), [m.group(1), m.group(2)]))
    small = from_dict(ref_train.ReferenceConfig, load_yaml(str(LONG)))
    assert rc.model.n_layers % small.model.n_layers == 0 and max(rc.mixture.lengths) == 32768
    ratio = GPT(rc.model).num_params(non_embedding=True) / GPT(small.model).num_params(non_embedding=True)
    assert 2.5 < ratio < 3.5


def test_layer_zero_dense_grid_shares_the_studys_store_and_dense_cells():
    """configs/frontier/long-dense0.yaml adds vertical-slash and FlexPrefill with dense_layers [0] to the study's
    store: the same model, store, lengths, tasks and samples; its dense cells are the study's (skipped there), its
    sparse cells are new ones; and a GPU suite runs it."""
    from leanformer.eval import harness

    study, extra = (harness.load_config(load_yaml(str(p))) for p in (STUDY, DENSE0))
    for key in ("models", "store", "tasks", "lengths", "samples", "seed", "sparsities", "max_new_tokens"):
        assert getattr(extra, key) == getattr(study, key), key
    harness._check_method_params(extra, harness.method_pairs(extra))
    ours, theirs = harness.build_grid(extra), harness.build_grid(study)
    dense = {c["key"] for c in ours if c["prefill_method"] == c["decode_method"] == "dense"}
    assert len(ours) == 5 * 4 * (1 + 2 * 4) and len(dense) == 5 * 4
    assert dense <= {c["key"] for c in theirs}  # the study's dense rows serve as this grid's baselines
    assert not ({c["key"] for c in ours} - dense) & {c["key"] for c in theirs}
    for m in ("vertical_slash", "flexprefill"):
        assert extra.method_params[m] == {**study.method_params[m], "dense_layers": [0]}
    assert "frontier_slice configs/frontier/long-dense0.yaml runs/gpu/reference-long-continue runs/frontier-long" \
        in GPU_SH


@pytest.mark.parametrize("size", ["deep", "shallow"])
def test_other_size_grid_is_a_slice_of_the_study(size):
    """configs/frontier/long-{deep,shallow}.yaml run the deep or shallow reference (the folder the suite
    reference-long-{size} writes) on a slice of the study's grid, into the study's store, so the isoFLOPS comparison
    finds both sizes' cells of one (task, length) side by side: same store, samples, seed, sparsities and answer
    budget; its tasks, lengths and methods are the study's; every cell is new (the model differs)."""
    from leanformer.eval import harness

    name = f"reference-long-{size}"
    study, other = (harness.load_config(load_yaml(str(p)))
                    for p in (STUDY, ROOT / f"configs/frontier/long-{size}.yaml"))
    for key in ("store", "samples", "seed", "sparsities", "max_new_tokens", "batch_size", "dtype"):
        assert getattr(other, key) == getattr(study, key), key
    assert set(other.tasks) <= set(study.tasks) and set(other.lengths) <= set(study.lengths)
    assert set(other.prefill) <= set(study.prefill) and set(other.decode) <= set(study.decode)
    assert other.models == [f"runs/gpu/{name}"] != study.models
    assert f"ref_job {name} " in GPU_SH
    assert f"frontier_slice configs/frontier/long-{size}.yaml runs/gpu/{name} runs/frontier-long" in GPU_SH
    harness._check_method_params(other, harness.method_pairs(other))
    ours = harness.build_grid(other)
    assert len(ours) == 3 * 3 * (1 + 2 * 4)
    assert not {c["key"] for c in ours} & {c["key"] for c in harness.build_grid(study)}


def test_smaller_size_is_the_long_reference_cut_to_half_its_layers():
    """The suite reference-long-shallow starts from the 8-layer long reference with 4 layers (half its non-embedding
    parameters) on the second job's lengths; its overrides make a valid config whose rows still fit the positions."""
    from leanformer.models.gpt import GPT

    m = re.search(r"ref_job reference-long-shallow \\\s+init_from=\S+ (model\.n_layers=\d+) '([^']+)'", GPU_SH)
    assert m, "the reference-long-shallow suite is missing or changed shape"
    rc = from_dict(ref_train.ReferenceConfig, apply_overrides(load_yaml(str(LONG)), [m.group(1), m.group(2)]))
    small = from_dict(ref_train.ReferenceConfig, load_yaml(str(LONG)))
    assert rc.model.n_layers < small.model.n_layers and max(rc.mixture.lengths) == 32768
    ratio = GPT(rc.model).num_params(non_embedding=True) / GPT(small.model).num_params(non_embedding=True)
    assert 0.4 < ratio < 0.6


def _suite_config(suite: str):
    """``(init_from as written, config)`` of a gpu.sh reference suite: its ``ref_job`` overrides on the long recipe,
    each ``${VAR:-default}`` at its default."""
    m = re.search(rf"ref_job {suite} \\\s+init_from=(\S+) (.*?) ;;", GPU_SH, re.S)
    assert m, f"the {suite} suite is missing or changed shape"
    words = shlex.split(m.group(2).replace("\\\n", " "))
    overrides = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", w) for w in words]  # ${VAR:-default} read as its default
    overrides = [w for w in overrides if w]  # an optional ${VAR:-} adds nothing
    return m.group(1), from_dict(ref_train.ReferenceConfig, apply_overrides(load_yaml(str(LONG)), overrides))


@pytest.mark.parametrize("suite", ["reference-long-chain", "reference-long-reverse"])
def test_chained_answer_recipe_is_the_long_recipe_with_chained_answers(suite):
    """The suites reference-long-chain and reference-long-reverse (which continues the first's output with backward
    associative recall mixed in) train with chained answers on; their overrides make a valid config whose rows fit
    the positions and whose answer margin holds a chained answer at 32K."""
    from leanformer.data import HFTokenizer
    from leanformer.tasks import TASKS

    init, rc = _suite_config(suite)
    assert rc.mixture.chain_answers and rc.mixture.keyed_answers
    if suite == "reference-long-reverse":
        assert rc.mixture.recall_fraction > 0 and rc.mixture.recall_reverse > 0
        assert "REVERSE_FROM:-.scratch/reference-long-chain" in init
    assert {"story_multihop", "variable_tracking"} <= set(rc.mixture.tasks)
    assert max(rc.mixture.lengths) + rc.mixture.answer_margin <= rc.model.max_seq_len
    tok = HFTokenizer.from_pretrained(str(SHIPPED))
    for name in ("story_multihop", "variable_tracking"):
        answer = TASKS[name]().generate(tok, 32768, 5).meta["chain_answer_text"]
        assert len(tok.encode(answer)) + 16 <= rc.mixture.answer_margin


def test_keep_recipe_starts_from_the_shipped_reference_at_its_rope_base():
    """The suite reference-long-keep continues the shipped 1K-8K reference at the rope base it was trained with,
    keeps the lengths where it solves multi-hop beside 32K, and weights multi-hop above the long recipe; its
    overrides make a valid config whose rows fit the positions."""
    init, rc = _suite_config("reference-long-keep")
    assert init == '"${KEEP_FROM:-src/leanformer/assets/reference}"'
    long = from_dict(ref_train.ReferenceConfig, load_yaml(str(LONG)))
    shipped = json.loads((SHIPPED / "model.json").read_text())["config"]
    assert rc.model.rope_theta == shipped["rope_theta"] < long.model.rope_theta
    assert min(rc.mixture.lengths) <= 2048 and max(rc.mixture.lengths) == 32768
    assert max(rc.mixture.lengths) + rc.mixture.answer_margin <= rc.model.max_seq_len
    assert rc.mixture.tasks["story_multihop"] > long.mixture.tasks["story_multihop"] and rc.lr < long.lr
