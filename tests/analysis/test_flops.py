"""FLOP / byte accounting against hand counts, published parameter counts and torch's own FLOP counter."""

import math

import pytest

from leanformer.analysis import flops
from leanformer.analysis.flops import ModelShape
from leanformer.errors import UserError

# d=8, 2 layers, 2 query heads / 1 KV head of dim 4, SwiGLU 12, vocab 10.
TINY = ModelShape(d_model=8, n_layers=2, n_heads=2, kv_heads=1, head_dim=4, ff_dim=12, vocab_size=10)


def test_prefill_hand_count():
    # per layer per token MACs: q 8*8 + k 8*4 + v 8*4 + o 8*8 + mlp 3*8*12 = 480 -> 960 FLOPs; 2 layers -> 1920.
    out = flops.prefill_flops(TINY, 5)
    assert out["linear"] == 5 * 1920
    assert out["lm_head"] == 2 * 8 * 10  # last position only
    # 15 causal pairs per head; 4*D = 16 FLOPs per pair per head; 2 heads, 2 layers.
    assert out["attention"] == 15 * 16 * 2 * 2 == 960
    assert out["total"] == 9600 + 160 + 960
    assert flops.prefill_flops(TINY, 5, all_logits=True)["lm_head"] == 5 * 160


def test_sparsity_scales_attention_only():
    dense = flops.prefill_flops(TINY, 7)
    sparse = flops.prefill_flops(TINY, 7, sparsity=0.75)
    assert sparse["attention"] == pytest.approx(0.25 * dense["attention"])
    assert sparse["linear"] == dense["linear"] and sparse["lm_head"] == dense["lm_head"]
    assert sparse["pairs"] == pytest.approx(0.25 * 28)


def test_decode_hand_count():
    out = flops.decode_flops(TINY, 7)
    assert out["linear"] == 1920 and out["lm_head"] == 160
    assert out["attention"] == 7 * 16 * 2 * 2
    assert flops.decode_flops(TINY, 7, sparsity=0.5)["attention"] == 7 * 16 * 2


@pytest.mark.parametrize("preset, non_emb, total", [
    ("qwen2.5-0.5b", 0.36e9, 0.49e9), ("qwen2.5-1.5b", 1.31e9, 1.54e9), ("qwen2.5-3b", 2.77e9, 3.09e9),
    ("qwen2.5-7b", 6.53e9, 7.61e9), ("qwen2.5-32b", 31.0e9, 32.5e9), ("qwen2.5-72b", 70.0e9, 72.7e9),
])
def test_presets_match_published_parameter_counts(preset, non_emb, total):
    # Model cards of Qwen2.5 state total and non-embedding counts to 2-3 significant digits.
    s = flops.PRESETS[preset]
    assert s.non_embedding_params == pytest.approx(non_emb, rel=0.01)
    assert s.total_params == pytest.approx(total, rel=0.01)


def test_preset_names_are_forgiving_and_errors_name_choices():
    assert flops.shape_of("Qwen/Qwen2.5-14B-Instruct") is flops.PRESETS["qwen2.5-14b"]
    for key in ("qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"):
        assert key in flops.PRESETS
    with pytest.raises(UserError, match="qwen2.5-7b"):
        flops.prefill_flops("qwen9-1t", 10)
    with pytest.raises(UserError, match="sparsity"):
        flops.prefill_flops(TINY, 10, sparsity=1.0)
    with pytest.raises(UserError, match="seq_len"):
        flops.prefill_flops(TINY, 0)


def test_accepts_gpt_config_hf_config_and_json(tmp_path):
    transformers = pytest.importorskip("transformers")
    from leanformer.models.gpt import GPTConfig

    g = GPTConfig(d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96, vocab_size=50)
    hf = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=96, vocab_size=50)
    a, b = flops.shape_of(g), flops.shape_of(hf)
    assert (a.d_model, a.n_layers, a.n_heads, a.kv_heads, a.head_dim, a.ff_dim) == (64, 3, 4, 2, 16, 96)
    assert flops.prefill_flops(g, 33)["total"] == flops.prefill_flops(hf, 33)["total"]
    q = transformers.Qwen2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=96, vocab_size=50)
    assert flops.shape_of(q).qkv_bias and not b.qkv_bias
    (tmp_path / "config.json").write_text(hf.to_json_string())
    assert flops.prefill_flops(tmp_path, 33)["total"] == flops.prefill_flops(hf, 33)["total"]
    assert flops.shape_of({"d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96,
                           "vocab_size": 50}).ff_dim == 96
    with pytest.raises(UserError, match="GPTConfig"):
        flops.shape_of(3.5)


def test_parameter_count_matches_torch_model():
    from leanformer.models.gpt import GPT, GPTConfig

    c = GPTConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, vocab_size=37, tie_embeddings=False)
    model = GPT(c)
    n = sum(p.numel() for p in model.parameters())
    assert flops.shape_of(c).total_params == n


def test_forward_flops_match_torch_flop_counter():
    # torch counts every matmul of the math attention backend, i.e. the full T x T score matrix; our causal count is
    # T(T+1)/2 pairs, so the two must differ by exactly the masked upper triangle.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from leanformer.models.gpt import GPT, GPTConfig

    c = GPTConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, vocab_size=37, attn_backend="math")
    t = 13
    model = GPT(c).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, t, dtype=torch.long))
    s = flops.shape_of(c)
    ours = flops.forward_flops_per_token(c, t) * t
    assert counter.get_total_flops() == ours + s.attention_flops_per_pair * (t * t - t * (t + 1) // 2)
    assert flops.train_flops_per_token(c, t) == pytest.approx(3 * ours / t)


def test_estimation_hand_counts():
    t = 100
    # vertical_slash: last 8 queries see 93..100 keys = 8*100 - 28 = 772 pairs; 2*D*H*L = 32 FLOPs per pair.
    vs = flops.prefill_flops(TINY, t, 0.9, method="vertical_slash", params={"window": 8})
    assert vs["estimation"] == 32 * 772
    assert vs["total"] == pytest.approx(vs["linear"] + vs["lm_head"] + vs["attention"] + vs["estimation"])
    # default approx (256) > t: all 5050 causal pairs are scored.
    assert flops.prefill_flops(TINY, t, 0.5, method="vertical_slash")["estimation"] == 32 * 5050
    assert flops.prefill_flops(TINY, t, 0.5, method="flexprefill")["estimation"] == 32 * 5050
    # block_topk, blocks of 16: nb = 7 -> 28 pooled pairs; pooling (H + H_kv) * T * D * L adds.
    bt = flops.prefill_flops(TINY, t, 0.5, method="block_topk", params={"block_size": 16})["estimation"]
    assert bt == 32 * 28 + 3 * 100 * 4 * 2
    # default blocks of 64: nb = 2 -> 3 pooled pairs.
    assert flops.prefill_flops(TINY, t, 0.5, method="block_topk")["estimation"] == 32 * 3 + 3 * 100 * 4 * 2
    # quest: ceil(100 / 16) = 7 pages, 4*D*H*L = 64 FLOPs per page per step.
    assert flops.decode_flops(TINY, t, 0.5, method="quest")["estimation"] == 64 * 7
    assert flops.decode_flops(TINY, t, 0.5, method="snapkv")["estimation"] == 0
    assert flops.prefill_flops(TINY, t)["estimation"] == 0
    with pytest.raises(UserError, match="vertical_slash"):
        flops.prefill_flops(TINY, t, method="nope")


def test_sample_flops_sums_decode_steps_and_decode_method_scoring():
    out = flops.sample_flops(TINY, 10, 4, decode_method="snapkv", decode_sparsity=0.5, params={"window": 3})
    steps = sum(flops.decode_flops(TINY, 10 + j, 0.5)["total"] for j in (1, 2, 3))
    assert out["decode"] == pytest.approx(steps)
    # snapkv: last 3 queries (27 pairs) scored once after prefill, plus pooling H*L*T*kernel.
    scoring = 32 * (3 * 10 - 3) + 2 * 2 * 10 * 21
    assert out["prefill"] == pytest.approx(flops.prefill_flops(TINY, 10)["total"] + scoring)
    assert flops.sample_flops(TINY, 10, 1)["decode"] == 0


def test_decode_bytes_hand_count():
    out = flops.decode_bytes(TINY, 9, batch=3, sparsity=0.5, dtype_bytes=2)
    assert out["kv_cache_dense"] == 3 * 2 * 2 * 1 * 4 * 9 * 2
    assert out["kv_cache"] == out["kv_cache_dense"] / 2
    assert out["weights"] == (TINY.non_embedding_params + 10 * 8 + 3 * 8) * 2
    assert out["total"] == out["weights"] + out["kv_cache"]
    big = flops.decode_bytes("qwen2.5-7b", 131072)
    # 7B: ~15 GB of bf16 weights; 28 layers * 2 * 4 KV heads * 128 * 131072 * 2 B = 7.5 GB of cache.
    assert big["kv_cache"] == 28 * 2 * 4 * 128 * 131072 * 2
    assert math.isclose(big["weights"] / 1e9, 14.1, rel_tol=0.01)
