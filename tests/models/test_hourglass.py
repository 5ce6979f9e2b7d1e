import itertools

import pytest
import torch

from leanformer.analysis.flops import forward_flops_per_token, prefill_flops
from leanformer.errors import ConfigError
from leanformer.models.gpt import GPTConfig
from leanformer.models.hourglass import Hourglass, HourglassConfig, parse_hierarchy
from leanformer.models.registry import build_model, model_config_from_dict

V = 37
DOWN, UP = ("avg", "linear", "attention"), ("repeat", "linear", "attention")
NESTED = "1@1 1@2 1@6 1@2 1@1"


def tiny(**kw):
    base = dict(vocab_size=V, d_model=32, n_heads=4, hierarchy="1@1 2@3 1@1", max_seq_len=96)
    base.update(kw)
    return Hourglass(HourglassConfig(**base)).eval()


def dependency(model, x):
    """``D[t, s]`` = output at t changed when token s is replaced (one batched forward, row s perturbs s)."""
    t = x.shape[1]
    batch = x.repeat(t + 1, 1)
    rows = torch.arange(t)
    batch[rows, rows] = (batch[rows, rows] + 1 + rows % (V - 1)) % V
    out = model(batch)
    diff = (out[:t] - out[t:]).abs().amax(-1)  # (s, t)
    return diff.T


def assert_causal(model, t=13):
    x = torch.randint(0, V, (1, t))
    d = dependency(model, x)
    past = torch.tril(torch.ones(t, t, dtype=torch.bool))
    assert torch.all(d[~past] == 0), "an output changed when a later token changed"
    assert torch.all(d[past] > 1e-6), f"output does not depend on some earlier token: {(d[past] <= 1e-6).sum()}"


@pytest.mark.parametrize("down,up", list(itertools.product(DOWN, UP)))
def test_causal_for_every_down_up_combination(down, up):
    assert_causal(tiny(downsampling=down, upsampling=up))


@pytest.mark.parametrize("down,up,base", [("avg", "repeat", "linear"), ("linear", "linear", "linear"),
                                          ("attention", "attention", "repeat"), ("linear", "attention", "linear")])
@pytest.mark.parametrize("hierarchy", [NESTED, "1@2 1@4 1@2"])
def test_causal_for_nested_hierarchies(down, up, base, hierarchy):
    assert_causal(tiny(downsampling=down, upsampling=up, upsampling_base=base, hierarchy=hierarchy), t=15)


@pytest.mark.parametrize("down,up", [("avg", "repeat"), ("linear", "linear"), ("attention", "attention")])
@pytest.mark.parametrize("hierarchy", ["1@1 2@3 1@1", NESTED])
def test_cached_generation_equals_full_recomputation(down, up, hierarchy):
    model = tiny(downsampling=down, upsampling=up, hierarchy=hierarchy)
    x = torch.randint(0, V, (2, 11))
    cached = model.generate(x, max_new_tokens=20)
    assert torch.equal(cached, model.generate(x, max_new_tokens=20, use_cache=False))
    seq = x
    for _ in range(20):  # greedy by rerunning the full forward pass, independent of generate()
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq[:, 11:])


@pytest.mark.parametrize("down,up", [("linear", "attention"), ("attention", "linear")])
def test_chunked_prefill_and_steps_give_the_full_forward_logits(down, up):
    model = tiny(downsampling=down, upsampling=up, hierarchy=NESTED)
    x = torch.randint(0, V, (2, 29))
    state = model.new_state(2, 29)
    parts, pos = [], 0
    for n in (7, 1, 1, 5, 12, 1, 2):  # chunks that start and end inside groups of 2 and 6
        parts.append(model(x[:, pos:pos + n], state=state, pos=pos))
        pos += n
    torch.testing.assert_close(torch.cat(parts, 1), model(x), rtol=1e-5, atol=1e-5)


def test_shortened_levels_use_rotary_positions_in_original_token_units():
    model = tiny(hierarchy=NESTED)
    seen = []
    orig = model.rotary.forward

    def spy(positions, dtype=torch.float32):
        seen.append(positions.tolist())
        return orig(positions, dtype)

    model.rotary.forward = spy
    model(torch.randint(0, V, (1, 13)))
    assert seen == [list(range(13)), [2 * i for i in range(7)], [6 * i for i in range(3)]]


@pytest.mark.parametrize("spec,levels", [("2@1 8@3 2@1", [(2, 1, 2), (8, 3, 0)]),
                                         ("2@1 2@2 8@6 2@2 3@1", [(2, 1, 3), (2, 2, 2), (8, 6, 0)]),
                                         ("1@2 2@6 1@2", [(0, 1, 0), (1, 2, 1), (2, 6, 0)]),
                                         ("4@1", [(4, 1, 0)])])
def test_hierarchy_parsing(spec, levels):
    assert parse_hierarchy(spec) == levels


@pytest.mark.parametrize("spec,msg", [("2@1 8@3", "palindromic"), ("2@1 8@3 2@2", "palindromic"),
                                      ("2@1 8x3 2@1", "bad item '8x3'"), ("", "layers@factor"),
                                      ("1@2 1@3 1@2", "multiple"), ("1@3 1@3 1@3", "grow"),
                                      ("1@1 0@2 1@1", "at least one layer"), ("1@0 1@2 1@0", "grow")])
def test_invalid_hierarchy_gives_a_clear_error(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        HourglassConfig(hierarchy=spec)


def test_registry_loss_and_backward_reach_every_parameter():
    c = model_config_from_dict({"name": "hourglass", "vocab_size": V, "d_model": 32, "n_heads": 4,
                                "hierarchy": NESTED, "downsampling": "attention", "upsampling": "attention"})
    model = build_model(c).train()
    x = torch.randint(0, V, (2, 17))
    loss, _ = model.compute_loss({"input_ids": x[:, :-1], "labels": x[:, 1:]})
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_flops_match_hand_count_and_shortening_saves_compute():
    c = HourglassConfig(vocab_size=V, d_model=32, n_heads=4, hierarchy="1@1 1@2 1@1", downsampling="avg",
                        upsampling="repeat")
    t = 64
    full, short = prefill_flops(c.block_config(2), t), prefill_flops(c.block_config(1), t // 2)
    hand = full["linear"] + full["attention"] + short["linear"] + short["attention"] + 2 * t * 32 * V
    assert forward_flops_per_token(c, t) == pytest.approx(hand / t)
    hg = HourglassConfig(vocab_size=V, d_model=32, n_heads=4, hierarchy="2@1 8@3 2@1")
    vanilla = GPTConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=12)
    assert forward_flops_per_token(hg, 4096) < 0.5 * forward_flops_per_token(vanilla, 4096)
