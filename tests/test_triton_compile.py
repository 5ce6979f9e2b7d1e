"""Every Triton launch kernel of the project compiled for an H100 (sm90) down to cubin, on the CPU.

The kernel tests run the kernels through Triton's CPU interpreter, which executes the Python body with NumPy and
never builds the kernel: it accepts code the compiler rejects (a ``tl.constexpr``-annotated name re-assigned inside
``tl.static_range``, ``tl.dot`` operands of different dtypes, shapes the layout passes or ``ptxas`` cannot lower) and
knows no shared-memory limit (checked here against an H100's). Those errors would otherwise first show on a GPU
machine. Here each kernel goes
through the real pipeline (TTIR, TTGIR, LLVM IR, PTX, ``ptxas``) for ``GPUTarget("cuda", 90, 32)``, which needs no
GPU, with the pointer dtypes, constexprs, warps and stages its launcher passes at a representative shape: bf16,
head dim 128, a Llama-style 32 query / 8 key-value heads (GQA group 4), 128K-token prompts (1024 blocks of 128),
Quest pages of 16 tokens with its default 1024-token budget; T5-base (head dim 64) for the bias gradient. Kernels
with constexpr branches get one case per branch a launcher takes; ``@triton.jit`` helpers compile through their
callers. Only an environment that cannot compile at all (no triton, no usable NVIDIA backend or ``ptxas``) skips.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os

import pytest

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SMEM_SM90 = 232448  # shared memory one block may opt in to on an H100 / H200 (227 KB)

BF, F32, I32, I64, I8 = "*bf16", "*fp32", "*i32", "*i64", "*i8"
DESC = "tensordesc<bf16[128, 128]>"  # TMA descriptor of BN x D keys or values (TensorDescriptor.from_tensor)


def ptrs(dtype: str, names: str) -> dict:
    return dict.fromkeys(names.split(), dtype)


# argument types other than i32, and constexprs, that several cases share
DECODE = {**ptrs(BF, "Q K V OUT"), **ptrs(F32, "OP MP LP"), "qk_scale": "fp32"}
ONE_SPLIT = ptrs(BF, "OP MP LP")  # one split: the partial slots are the output, untouched
SPLIT = dict(BLOCK_G=16, BLOCK_N=64, D=128)
ROPE = {**ptrs(BF, "Q K V COS SIN KC VC KMIN KMAX QO"), **ptrs(I32, "LENS SLOT STARTS CAP")}
ROPE_OFF = dict(HAS_SLOT=False, HAS_START=False, HAS_CAP=False, PAGE=0, HALF=64)
SELECT = {**ptrs(BF, "Q KMIN KMAX SMIN SMAX"), **ptrs(F32, "SCORES"), **ptrs(I32, "CNT LENS OUT SCR")}
PAGES = dict(PREC="tf32", BLOCK_G=16, BLOCK_P=64, D=128)
BISECT = dict(STEPS=0, CAP=16)  # the page choice's top-k: 32 counts over the whole row
TILE = {**ptrs(BF, "Q K V O"), **ptrs(I32, "TILES TCNT COLS CCNT BDIAG TILES2 HEADS"), "KD": DESC, "VD": DESC,
        "KCD": DESC, "VCD": DESC, "qk_scale": "fp32"}
TILE128 = dict(USE_TMA=True, STAGES=3, BS=128, BM=128, BN=128, D=128)
VS = {**ptrs(BF, "Q K"), **ptrs(F32, "MP LP M L VP TP SB BND"), "qk_scale": "fp32"}
VS_CFG = dict(BM=64, BN=64, D=128, STAGES=2)
DMC = {**ptrs(BF, "k_pages v_pages k v"), **ptrs(I32, "page_table lengths run next_page"),
       **ptrs(F32, "acc_k acc_v acc_w alpha_logit omega"), "merged": I8}
DMC_DEC = {**ptrs(BF, "q k_pages v_pages out"), **ptrs(I32, "page_table lengths"),
           **ptrs(F32, "m_out l_out acc_out"), "scale": "fp32"}
BIAS = {**ptrs(BF, "Q K V O DO"), **ptrs(F32, "BIAS LSE DELTA G"), "scale": "fp32"}
BIAS_CFG = dict(BM=64, BN=64, BD=64, PREC="tf32")

# case id: ("module:kernel" under leanformer, argument types other than i32, constexprs, num_warps, num_stages)
CASES = {
    # sparse decode (SnapKV, dense, streaming, Quest): split-K over gathered positions or pages
    "gather_decode-positions-valid": ("sparse.kernels.decode:_gather_decode_fwd",
                                      {**DECODE, "IDX": I64, "VALID": "*i1"},
                                      dict(PAGE=0, HAS_VALID=True, ONE_SPLIT=False, **SPLIT), 4, 2),
    "gather_decode-positions-one_split": ("sparse.kernels.decode:_gather_decode_fwd",
                                          {**DECODE, **ONE_SPLIT, "IDX": I64, "VALID": I64},
                                          dict(PAGE=0, HAS_VALID=False, ONE_SPLIT=True, **SPLIT), 4, 2),
    "gather_decode-quest_pages-fused_merge": ("sparse.kernels.decode:_gather_decode_fwd",
                                              {**DECODE, **ptrs(I32, "IDX VALID CNT")},
                                              dict(PAGE=16, HAS_VALID=False, ONE_SPLIT=False, FUSED_MERGE=True,
                                                   BLOCK_S=64, **SPLIT), 4, 2),
    "merge_splits": ("sparse.kernels.decode:merge_splits", {**ptrs(F32, "OP MP LP"), "OUT": BF},
                     dict(BLOCK_S=64, D=128), 4, 3),
    # the engine's decode over its static cache
    "cache_decode-dense": ("infer.kernels:_cache_decode_fwd", {**DECODE, **ptrs(I32, "LENS STARTS PAGES")},
                           dict(PAGE=0, HAS_START=False, ONE_SPLIT=False, **SPLIT), 4, 2),
    "cache_decode-ada_pool-one_split": ("infer.kernels:_cache_decode_fwd",
                                        {**DECODE, **ONE_SPLIT, **ptrs(I32, "LENS STARTS PAGES")},
                                        dict(PAGE=0, HAS_START=True, ONE_SPLIT=True, **SPLIT), 4, 2),
    "cache_decode-quest_pages": ("infer.kernels:_cache_decode_fwd", {**DECODE, **ptrs(I32, "LENS STARTS PAGES")},
                                 dict(PAGE=16, HAS_START=False, ONE_SPLIT=False, **SPLIT), 4, 2),
    "rope_append-ring": ("infer.rope_append:_rope_append", ROPE, {**ROPE_OFF, "HAS_SLOT": True, "HAS_CAP": True},
                         1, 3),
    "rope_append-ada_pool": ("infer.rope_append:_rope_append", ROPE, {**ROPE_OFF, "HAS_START": True}, 1, 3),
    "rope_append-quest_meta": ("infer.rope_append:_rope_append", ROPE, {**ROPE_OFF, "PAGE": 16}, 1, 3),
    # a prefill's rotary + layout change (q and k), the layout alone (v)
    "rope_heads-rotary": ("infer.rope_layout:_rope_heads", ptrs(BF, "X COS SIN OUT"), dict(ROPE=True, BT=32, HALF=64),
                          4, 3),
    "rope_heads-layout": ("infer.rope_layout:_rope_heads", ptrs(BF, "X COS SIN OUT"), dict(ROPE=False, BT=32, HALF=64),
                          4, 3),
    # Quest's page selection: engine (lengths on the device, bf16 summaries), method (int8 summaries, per head)
    "select_pages-engine": ("sparse.kernels.quest_scores:_select_fwd", SELECT,
                            dict(SHARE=True, QUANT=False, PAGE=16, NP=8192, NT=0, KP=64, **PAGES, **BISECT), 8, 3),
    # the top-k finished on the candidates left after six counts, a row alone and a row with a tail
    "select_pages-compact": ("sparse.kernels.quest_scores:_select_fwd", SELECT,
                             dict(SHARE=True, QUANT=False, PAGE=16, NP=8192, NT=0, KP=512, STEPS=6, CAP=512,
                                  **PAGES), 8, 3),
    "select_pages-compact-tail": ("sparse.kernels.quest_scores:_select_fwd", SELECT,
                                  dict(SHARE=True, QUANT=False, PAGE=16, NP=8192, NT=8, KP=512, STEPS=6, CAP=512,
                                       **PAGES), 8, 3),
    "select_pages-engine-128k": ("sparse.kernels.quest_scores:_select_fwd", SELECT,  # a 128K cache + headroom
                                 dict(SHARE=True, QUANT=False, PAGE=16, NP=8192, NT=8, KP=64, **PAGES, **BISECT), 8, 3),
    "select_pages-engine-256k": ("sparse.kernels.quest_scores:_select_fwd", SELECT,  # a row of the most pages
                                 dict(SHARE=True, QUANT=False, PAGE=16, NP=16384, NT=0, KP=512, **PAGES,
                                      **BISECT), 16, 3),
    "select_pages-int8-per_head": ("sparse.kernels.quest_scores:_select_fwd",
                                   {**SELECT, **ptrs(I8, "KMIN KMAX"), **ptrs(F32, "SMIN SMAX LENS")},
                                   dict(SHARE=False, QUANT=True, PAGE=0, NP=4096, NT=64, KP=64, **PAGES,
                                        **BISECT), 8, 3),
    "page_scores": ("sparse.kernels.quest_scores:_page_scores_fwd", {**SELECT, "OUT": F32},
                    dict(SHARE=True, QUANT=False, **PAGES), 4, 3),
    # prefill block selection: block top-k's tiles, FlexPrefill's per-row counts and tiles; top-k rows
    "topk_rows-block_tiles": ("sparse.kernels.block_select:_topk_rows_fwd", {"S": F32, **ptrs(I32, "OUT CNT")},
                              dict(TILES=True, NP=1024), 1, 3),
    "topk_rows-rows": ("sparse.kernels.block_select:_topk_rows_fwd", {"S": F32, **ptrs(I32, "OUT CNT")},
                       dict(TILES=False, NP=8192), 8, 3),
    # FlexPrefill's counts per row: from the coverage kernel (int32), or from a requested sparsity (int64)
    "row_tiles-coverage_counts": ("sparse.kernels.block_select:_row_tiles_fwd", {"S": F32, **ptrs(I32, "KROW OUT CNT")},
                                  dict(NP=1024), 1, 3),
    "row_tiles-budget_counts": ("sparse.kernels.block_select:_row_tiles_fwd",
                                {"S": F32, "KROW": I64, **ptrs(I32, "OUT CNT")}, dict(NP=1024), 1, 3),
    "coverage": ("sparse.kernels.coverage:_coverage_fwd", {"S": F32, "OUT": I32, "alpha": "fp32"},
                 dict(NP=1024), 2, 3),
    # FlexPrefill's budget split across heads: 32 heads (one program of 4 warps), 128 (8 warps)
    "water_fill-32": ("sparse.kernels.budget:_water_fill_fwd",
                      {**ptrs("*fp64", "NEED TOTAL OUT"), "cap_hi": "fp32", "cap_lo": "fp32"}, dict(HP=32), 4, 3),
    "water_fill-128": ("sparse.kernels.budget:_water_fill_fwd",
                       {**ptrs("*fp64", "NEED TOTAL OUT"), "cap_hi": "fp32", "cap_lo": "fp32"}, dict(HP=128), 8, 3),
    # FlexPrefill's query-aware test: 128-key blocks of a 128K prompt's row
    "block_distance": ("sparse.kernels.divergence:_block_distance_fwd", ptrs(F32, "S P OUT"),
                       dict(BS=128, NP=1024, CB=32), 4, 3),
    # vertical and slash scores of the last window (FlexPrefill with its query-aware tail; vertical-slash without)
    "vs_stats": ("sparse.kernels.vs_estimate:_stats", VS, VS_CFG, 4, 3),
    "vs_sums-tail": ("sparse.kernels.vs_estimate:_sums", VS, {**VS_CFG, "HAS_TAIL": True}, 4, 3),
    "vs_sums-no_tail": ("sparse.kernels.vs_estimate:_sums", VS, {**VS_CFG, "HAS_TAIL": False}, 4, 3),
    "vs_sums-transposed-tail": ("sparse.kernels.vs_estimate:_sums", VS,
                                {**VS_CFG, "HAS_TAIL": True, "TRANSPOSE": True}, 4, 3),
    "vs_sums-transposed-no_tail": ("sparse.kernels.vs_estimate:_sums", VS,
                                   {**VS_CFG, "HAS_TAIL": False, "TRANSPOSE": True}, 4, 3),
    # the tile attention kernel: block top-k (128 and 64-token blocks), vertical-slash / streaming (block
    # diagonals and columns), FlexPrefill (both per head); pointer loads and the first column loop
    # (kernel_options USE_TMA=False, COL_STAGES=0)
    "tile_attn-block_topk": ("sparse.kernels.tile_attention:_tile_attn_fwd", TILE,
                             dict(MODE=1, HAS_COLS=False, COL_STAGES=0, **TILE128), 8, 3),
    "tile_attn-block_topk-bs64": ("sparse.kernels.tile_attention:_tile_attn_fwd",
                                  {**TILE, "KD": "tensordesc<bf16[64, 128]>", "VD": "tensordesc<bf16[64, 128]>"},
                                  dict(MODE=1, HAS_COLS=False, COL_STAGES=0, USE_TMA=True, STAGES=3, BS=64, BM=64,
                                       BN=64, D=128), 4, 3),
    "tile_attn-vertical_slash": ("sparse.kernels.tile_attention:_tile_attn_fwd", {**TILE, "BDIAG": I8},
                                 dict(MODE=2, HAS_COLS=True, COL_STAGES=3, **TILE128), 8, 3),
    "tile_attn-vertical_slash-col_mask": ("sparse.kernels.tile_attention:_tile_attn_fwd", {**TILE, "BDIAG": I8},
                                          dict(MODE=2, HAS_COLS=True, COL_STAGES=3, COL_MASK=1, **TILE128), 8, 3),
    "tile_attn-vertical_slash-col_copy": ("sparse.kernels.tile_attention:_tile_attn_fwd", {**TILE, "BDIAG": I8},
                                          dict(MODE=2, HAS_COLS=True, COL_STAGES=3, COL_COPY=1, **TILE128), 8, 3),
    "tile_attn-flexprefill_hybrid": ("sparse.kernels.tile_attention:_tile_attn_fwd",
                                     {**TILE, **ptrs(I8, "BDIAG HEADS")},
                                     dict(MODE=3, HAS_COLS=True, COL_STAGES=3, **TILE128), 8, 3),
    "tile_attn-pointer_loads-first_col_loop": ("sparse.kernels.tile_attention:_tile_attn_fwd",
                                               {**TILE, **ptrs(BF, "KD VD"), "BDIAG": I8},
                                               dict(MODE=2, HAS_COLS=True, COL_STAGES=0,
                                                    **{**TILE128, "USE_TMA": False}), 8, 3),
    # line patterns' bookkeeping: column costs (every position weighted and summed, a list summed, every position)
    # and the line lists, over a 128K-token prompt's rows
    "column_cost-positions-weighted-total": ("sparse.kernels.line_pattern:_column_cost",
                                             {**ptrs(I8, "BD COLS W"), "RUN": I32, "OUT": "*fp64"},
                                             dict(ALL=True, WEIGHT=True, SUM=True, BLOCK=1024), 4, 3),
    "column_cost-list-total": ("sparse.kernels.line_pattern:_column_cost",
                               {**ptrs(I8, "BD W"), **ptrs(I32, "RUN COLS"), "OUT": "*fp64"},
                               dict(ALL=False, WEIGHT=False, SUM=True, BLOCK=1024), 4, 3),
    "column_cost-positions": ("sparse.kernels.line_pattern:_column_cost",
                              {**ptrs(I8, "BD COLS W"), "RUN": I32, "OUT": "*fp64"},
                              dict(ALL=True, WEIGHT=False, SUM=False, BLOCK=1024), 4, 3),
    "from_lines": ("sparse.kernels.line_pattern:_from_lines",
                   {**ptrs(I8, "BD CM"), **ptrs(I32, "RUN CNT DIAGS COLS CCNT")}, dict(BLOCK=1024), 4, 3),
    # DMC: append-or-merge, and the paged decode (an autotuned bf16 config; an fp32 cache in one split)
    "dmc_update": ("kvcache.dmc_kernels:_update_kernel", DMC, dict(PAGE=16, BLOCK_D=128), 4, 3),
    "dmc_decode-bf16": ("kvcache.dmc_kernels:_decode_kernel", DMC_DEC,
                        dict(PAGE=16, BLOCK_N=128, BLOCK_G=16, BLOCK_D=128, IEEE=False, ONE_SPLIT=False), 8, 3),
    "dmc_decode-fp32-ieee-one_split": ("kvcache.dmc_kernels:_decode_kernel",
                                       {**DMC_DEC, **ptrs(F32, "q k_pages v_pages out")},
                                       dict(PAGE=16, BLOCK_N=64, BLOCK_G=16, BLOCK_D=128, IEEE=True, ONE_SPLIT=True),
                                       4, 2),
    # T5's attention-bias gradient (bf16 activations, fp32 bias)
    "bias_grad-row_stats": ("models.bias_grad:_row_stats", BIAS, BIAS_CFG, 4, 3),
    "bias_grad-tiles": ("models.bias_grad:_bias_grad_tiles", BIAS, BIAS_CFG, 4, 3),
}


def kernel(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(f"leanformer.{module}"), name)


def signature(fn, types: dict, consts: dict) -> tuple[dict, dict]:
    """``(signature, constexprs)`` of a launch: constexprs and arguments left at a default (``None`` or a constexpr
    default, specialised as the launch does), the listed types (a table may list more names than the kernel has:
    those are unused), ``i32`` for every other argument."""
    consts = dict(consts)
    for p in fn.params:
        if p.name not in consts and p.name not in types and p.default is not inspect.Parameter.empty:
            consts[p.name] = p.default
    return {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}, consts


def build(fn, types: dict, consts: dict, num_warps: int, num_stages: int):
    sig, consts = signature(fn, types, consts)
    # torch's allocations are 16-byte aligned, and a launch marks such pointers (vectorised loads and stores)
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values()) if t.startswith("*")}
    # fp fusion on, as every launch has it by default (named so that Triton 3.9 does not warn about the default)
    options = dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True)
    return triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=aligned), target=TARGET, options=options)


@triton.jit
def _probe(X, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < N) + 1, mask=offs < N)


@functools.cache
def _unusable(cache_dir: str) -> str | None:
    """Why this environment cannot compile for sm90 at all (``None``: it can), from one trivial kernel."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: @triton.jit builds interpreter functions, which are never compiled"
    try:
        build(_probe, {"X": F32}, {"BLOCK": 16}, 1, 1)
    except Exception as e:  # noqa: BLE001 - any failure here is the environment's, never our kernels'
        return f"Triton {triton.__version__} cannot compile a trivial kernel for sm90: {type(e).__name__}: {e}"
    return None


@pytest.fixture
def sm90(tmp_path_factory, monkeypatch):
    """A private Triton cache (every case is compiled, never served from an earlier run); skips where nothing can
    compile."""
    cache = tmp_path_factory.getbasetemp() / "triton-cache"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    if (why := _unusable(str(cache))) is not None:
        pytest.skip(why)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_compiles_for_sm90(case, sm90):
    path, types, consts, num_warps, num_stages = CASES[case]
    compiled = build(kernel(path), types, consts, num_warps, num_stages)
    assert compiled.asm.get("cubin"), f"{case}: no cubin"
    assert compiled.metadata.shared <= SMEM_SM90, (
        f"{case}: {compiled.metadata.shared} bytes of shared memory, more than an H100 block's {SMEM_SM90}")
