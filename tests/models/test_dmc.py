import pytest
import torch

from leanformer.models import dmc_ops as ops
from leanformer.models.dmc import DMC, DMCConfig
from leanformer.models.gpt import GPT, GPTConfig

SMALL = dict(vocab_size=61, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


def base_gpt(**kw):
    return GPT(GPTConfig(**{**SMALL, **kw})).eval()


def merging_dmc(**kw):
    """Random weights with offset 0, so about half the decisions merge; a small window exercises the cap."""
    kw = {"dmc_stage": "finetune", "alpha_offset": 0.0, "window": 3, **kw}
    return DMC.from_gpt(base_gpt(), **kw).eval()


def naive_recurrence(k, v, alpha, omega):
    """The paper's sequential update, one token at a time: every partial state."""
    ks, vs = [], []
    k_sum = torch.zeros_like(k[..., 0, :])
    v_sum, w_sum = torch.zeros_like(k_sum), torch.zeros_like(alpha[..., 0])
    for t in range(k.shape[-2]):
        a, w = alpha[..., t], omega[..., t]
        k_sum = a[..., None] * k_sum + w[..., None] * k[..., t, :]
        v_sum = a[..., None] * v_sum + w[..., None] * v[..., t, :]
        w_sum = a * w_sum + w
        ks.append(k_sum / w_sum[..., None])
        vs.append(v_sum / w_sum[..., None])
    return torch.stack(ks, -2), torch.stack(vs, -2)


@pytest.mark.parametrize("hard", [True, False])
def test_partial_states_equal_the_sequential_recurrence(hard):
    b, h, t, d = 2, 3, 13, 5
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    alpha = (torch.rand(b, h, t) > 0.5).float() if hard else torch.rand(b, h, t)
    alpha[..., 0] = 0
    omega = torch.rand(b, h, t) + 0.1
    ks, vs, *_ = ops.partial_states(k, v, alpha, omega, window=t)
    rk, rv = naive_recurrence(k, v, alpha, omega)
    torch.testing.assert_close(ks, rk)
    torch.testing.assert_close(vs, rv)


@pytest.mark.parametrize("window", [1, 4, 12])
def test_windowed_partial_states_match_the_loop_forward_and_backward(window):
    g = torch.Generator().manual_seed(42)
    b, h, t, d = 2, 3, 63, 5
    k, v = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    alpha = torch.rand(b, h, t, generator=g)
    alpha[..., 0] = 0
    alpha[..., 7] = 0  # an exact zero inside the window (sigmoid underflow in training)
    omega = torch.rand(b, h, t, generator=g) + 0.1
    grads = []
    for fn in (ops.partial_states, ops.partial_states_reference):
        xs = [x.clone().requires_grad_() for x in (k, v, alpha, omega)]
        out = fn(*xs, window=window)
        sum(o.sin().sum() for o in out).backward()
        grads.append((out, [torch.zeros_like(x) if x.grad is None else x.grad for x in xs]))  # window 1: no alpha
    (fast, gf), (ref, gr) = grads
    for name, x, y in zip(("k_state", "v_state", "k_sum", "v_sum", "w_sum"), fast, ref):
        torch.testing.assert_close(x, y, msg=name)
    for name, x, y in zip(("dk", "dv", "dalpha", "domega"), gf, gr):
        torch.testing.assert_close(x, y, msg=name)


def test_cap_merges_bounds_groups_and_first_token_appends():
    merge = torch.rand(4, 3, 101) > 0.1
    capped = ops.cap_merges(merge, window=5)
    assert not capped[..., 0].any() and not (capped & ~merge).any()
    for row in capped.reshape(-1, 101).tolist():
        group = 1
        for m in row[1:]:
            group = group + 1 if m else 1
            assert group <= 5


def test_merge_bias_masks_superseded_states_not_the_diagonal():
    alpha = torch.rand(1, 1, 7)
    bias = ops.merge_bias(torch.log1p(-alpha))[0, 0]
    assert torch.equal(bias.diagonal(), torch.zeros(7))
    assert int((bias.triu(1) == float("-inf")).sum()) == 7 * 6 // 2
    torch.testing.assert_close(bias[5, 2], torch.log1p(-alpha[0, 0, 3]))


def test_alpha_zero_gives_the_base_model_logits():
    gpt = base_gpt()
    x = torch.randint(0, 61, (2, 23))
    assert torch.equal(DMC.from_gpt(gpt, dmc_stage="base").eval()(x), gpt(x))
    # the full DMC path (partial states + merge bias) with every decision "append" and the channel not faded
    model = DMC.from_gpt(gpt, dmc_stage="finetune", alpha_offset=1e4).eval()
    for a in model.attns():
        a.fade = 0.0
    torch.testing.assert_close(model(x), gpt(x), rtol=1e-5, atol=1e-5)
    assert model.compression_stats()["compression_ratio"] == 1.0


def test_faded_channel_is_excluded_from_scores():
    model = merging_dmc()
    x = torch.randint(0, 61, (1, 9))
    with torch.no_grad():  # the repurposed key channel only moves decisions; with decisions fixed, nothing changes
        a = model.layers[0].attn
        a.force_cr = 2
        before = model(x)
        a.k_proj.weight.view(a.n_kv_heads, a.head_dim, -1)[:, a.channel] += 3.0
        torch.testing.assert_close(model(x), before)
        a.fade = 0.0  # not faded: the same change now moves the scores
        assert not torch.allclose(model(x), before)


def test_incremental_decoding_equals_parallel_eval_forward_and_lengths_count_appends():
    model = merging_dmc()
    x = torch.randint(0, 61, (2, 23))
    full = model(x)
    caches = model.new_caches(2, 40, impl="reference")
    steps = [model(x[:, :7], caches=caches, pos=0)] + [model(x[:, i:i + 1], caches=caches, pos=i)
                                                        for i in range(7, 23)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    # layer 0's decisions, computed directly from its input: the cache holds one slot per append
    attn = model.layers[0].attn
    cos, sin = model.rotary(torch.arange(23))
    _, _, _, logit, _ = attn.project(model.layers[0].attn_norm(model.embed(x)), cos, sin, 0)
    appends = (~ops.cap_merges(logit > 0, 3)).sum(-1)
    assert torch.equal(caches[0].lengths.long(), appends)
    assert 3 < int(appends.min()) and int(appends.max()) < 20  # compression happened, not everywhere
    for c in caches:
        c.check()


def test_generate_with_compressed_cache_equals_greedy_recompute():
    model = merging_dmc()
    x = torch.randint(0, 61, (2, 5))
    new = model.generate(x, max_new_tokens=6)
    seq = x
    for _ in range(6):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(new, seq[:, 5:])


def test_training_loss_adds_aux_and_trains_the_repurposed_channels():
    model = merging_dmc(dmc_stage="retrofit").train()
    model.on_train_step(0, 0.5)
    assert model.target == pytest.approx(2.5)
    x = torch.randint(0, 61, (2, 17))
    loss, info = model.compute_loss({"input_ids": x[:, :-1], "labels": x[:, 1:]})
    torch.testing.assert_close(loss, info["lm_loss"] + info["aux_loss"])
    loss.backward()
    for a in model.attns():
        rows_k = a.k_proj.weight.grad.view(a.n_kv_heads, a.head_dim, -1)[:, a.channel]
        rows_q = a.q_proj.weight.grad.view(a.n_heads, a.head_dim, -1)[:, a.channel]
        assert rows_k.abs().sum() > 0 and rows_q.abs().sum() > 0
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base_gpt().parameters())


def test_stage_schedule():
    gpt = base_gpt()
    z = DMC.from_gpt(gpt, dmc_stage="zero_out")
    z.on_train_step(3, 0.25)
    assert all(a.fade == 0.25 and not a.decide for a in z.attns())
    r = DMC.from_gpt(gpt, dmc_stage="retrofit", target_cr=3.0)
    r.on_train_step(0, 0.0)
    assert r.target == 1.0 and all(a.fade == 1.0 and a.decide for a in r.attns())
    f = DMC.from_gpt(gpt, dmc_stage="finetune", target_cr=3.0)
    f.on_train_step(0, 0.0)
    assert f.target == 3.0


def test_force_compression_gives_the_exact_ratio():
    model = merging_dmc(window=12)
    model.force_compression(4)
    model(torch.randint(0, 61, (1, 24)))
    assert model.compression_stats()["compression_ratio"] == 4.0
    with pytest.raises(ValueError, match="window=12"):
        model.force_compression(13)


def test_from_hf_llama_and_save_load(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from leanformer.train.checkpoint import load_model

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=77, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                      max_position_embeddings=64)).eval()
    x = torch.randint(0, 77, (1, 19))
    model = DMC.from_hf(hf, dmc_stage="base").eval()
    torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    back = load_model(tmp_path)
    assert isinstance(back, DMC) and back.config.dmc_stage == "base"
    assert torch.equal(back(x), model(x))


def test_bad_config_values_are_named():
    from leanformer.errors import ConfigError
    from leanformer.models.registry import model_config_from_dict

    with pytest.raises(ConfigError, match="model.dmc_channel"):
        model_config_from_dict({"name": "dmc", "dmc_channel": "middle"})
    with pytest.raises(ConfigError, match="model.target_cr"):
        model_config_from_dict({"name": "dmc", "target_cr": 0.5})
    assert isinstance(model_config_from_dict({"name": "dmc"}), DMCConfig)
