"""Each efficient-training method's defining rule (Kaddour et al., 2023, "No Train No Gain")."""

from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from leanformer.data.packing import RandomWindows
from leanformer.models.gpt import GPT, GPTConfig
from leanformer.train.budgets import RSTClock, WallClock
from leanformer.train.methods import build_method
from leanformer.train.methods.common import is_skipped, layer_stacks, per_example_loss
from leanformer.train.methods.layerdrop import drop_probabilities, keep_rate
from leanformer.train.methods.rho_loss import RhoLoss
from leanformer.train.methods.selective_backprop import SelectiveBackprop
from leanformer.train.trainer import Trainer


def fake_trainer(n_layers=4, batch_size=5, seed=0, clock=None):
    model = GPT(GPTConfig(vocab_size=50, d_model=16, n_layers=n_layers, n_heads=2))
    tokens = np.random.default_rng(3).integers(0, 50, 4001).astype(np.int32)
    return SimpleNamespace(model=model, cfg=SimpleNamespace(seed=seed, trainer=SimpleNamespace(batch_size=batch_size)),
                           clock=clock or WallClock(), device=torch.device("cpu"), _autocast=nullcontext,
                           batches=RandomWindows(tokens, 17, batch_size, seed), log=lambda e: None)


@pytest.mark.parametrize("optimizer_state", ["fresh", "copy"])
def test_stacked_layers_equal_the_copied_ones_at_the_moment_of_stacking(tmp_path, optimizer_state, ntng):
    tiny_cfg = ntng.tiny_cfg
    trainer = Trainer(tiny_cfg("trainer.max_steps=10"), tmp_path,
                      hooks=[build_method("stacking", optimizer_state=optimizer_state)])
    hook, stack = trainer.hooks[0], trainer.model.layers
    assert [is_skipped(x) for x in stack] == [False, True, True, True]  # 4 layers start at 1
    assert trainer.clock.active_fraction == 0.25
    x = torch.randint(0, 260, (2, 11))
    loss = trainer.model(x, targets=x)[1]
    loss.backward()
    trainer.optimizer.step()
    assert all(trainer.optimizer.state.get(p) is None for p in stack[1].parameters())  # skipped: no state
    hook.on_step_begin(trainer, 1, 0.1)
    assert hook.level == 0
    hook.on_step_begin(trainer, 2, 0.125)
    assert hook.level == 1 and [is_skipped(x) for x in stack] == [False, False, True, True]
    for a, b in zip(stack[0].parameters(), stack[1].parameters()):
        assert torch.equal(a, b) and a is not b
        if optimizer_state == "copy":
            sa, sb = trainer.optimizer.state[a], trainer.optimizer.state[b]
            assert all(torch.equal(sa[k], sb[k]) and sa[k] is not sb[k] for k in sa)
        else:
            assert b not in trainer.optimizer.state
    with torch.no_grad():  # block 1 starts as a copy: perturb block 0, block 1 keeps the old weights
        next(stack[0].parameters()).add_(1.0)
    hook.on_step_begin(trainer, 3, 0.31)
    assert hook.level == 2 and not any(is_skipped(x) for x in stack)
    for i in range(2):
        for a, b in zip(stack[i].parameters(), stack[2 + i].parameters()):
            assert torch.equal(a, b)
    assert not torch.equal(next(stack[0].parameters()), next(stack[1].parameters()))
    assert hook.state_dict() == {"level": 2} and trainer.clock.active_fraction == 1.0


def test_stacking_refuses_a_depth_it_cannot_halve(tmp_path, ntng):
    tiny_cfg = ntng.tiny_cfg
    from leanformer.errors import ConfigError

    with pytest.raises(ConfigError, match="a stack of 6 layers cannot be halved 2 times"):
        Trainer(tiny_cfg("trainer.max_steps=1", "model.n_layers=6"), tmp_path, hooks=[build_method("stacking")])


def test_layer_drop_probabilities_follow_the_formula_and_evaluation_uses_all_layers():
    assert keep_rate(0.0) == 1.0 and keep_rate(1.0, 0.5, 20.0) == pytest.approx(0.5 + 0.5 * np.exp(-20))
    t = 0.05
    theta = 0.5 * np.exp(-20 * t) + 0.5
    expected = np.arange(1, 9) / 8 * (1 - theta)
    np.testing.assert_allclose(drop_probabilities(8, t), expected)
    trainer = fake_trainer(n_layers=8)
    hook = build_method("layerdrop")
    hook.setup(trainer)
    x = torch.randint(0, 50, (2, 9))
    trainer.model.eval()
    full = trainer.model(x)
    n = 3000
    drops = np.zeros(8)
    for step in range(n):
        hook.on_step_begin(trainer, step, t)
        skipped = np.array([is_skipped(layer) for layer in trainer.model.layers])
        assert trainer.clock.active_fraction == pytest.approx(1 - skipped.mean())
        drops += skipped
        hook.on_step_end(trainer, step)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(drops / n - expected) < 4 * sigma + 1e-9)
    assert trainer.clock.active_fraction == 1.0
    torch.testing.assert_close(trainer.model(x), full)  # all layers at evaluation


def test_selective_backprop_keep_probability_is_the_loss_percentile_to_the_beta():
    sb = SelectiveBackprop(beta=2.0, history=4)
    np.testing.assert_allclose(sb.keep_probabilities([4.0, 3.0, 2.0, 1.0]), [1, (1 / 2) ** 2, (1 / 3) ** 2, 1 / 16])
    # 2.5 evicts 4.0 from the window of 4: history {3, 2, 1, 2.5}, three of them <= 2.5
    np.testing.assert_allclose(sb.keep_probabilities([2.5]), [(3 / 4) ** 2])
    again = SelectiveBackprop(beta=2.0, history=4)
    again.load_state_dict(sb.state_dict())
    assert again.keep_probabilities([0.5]) == sb.keep_probabilities([0.5])


def test_selective_backprop_charges_its_selection_forwards(tmp_path, ntng):
    tiny_cfg, synthetic_table = ntng.tiny_cfg, ntng.synthetic_table
    cfg = tiny_cfg()
    table = synthetic_table(cfg)
    trainer = fake_trainer(batch_size=3, clock=RSTClock(table))
    sb = SelectiveBackprop(beta=1.0)
    for _ in range(10):  # earlier losses far above: the new examples sit at low percentiles, few are kept
        sb.history.add(1e3)
    batch = sb.micro_batch(trainer, 0)
    assert batch["input_ids"].shape == (3, 17) and sb.cursor >= 2
    assert trainer.clock.seconds == pytest.approx(sb.cursor * table.forward[-1])
    candidates = torch.cat([trainer.batches.batch(i)["input_ids"] for i in range(sb.cursor)])
    assert all((candidates == row).all(1).any() for row in batch["input_ids"])


@pytest.mark.parametrize("charge_il", [True, False])
def test_rho_selects_the_highest_reducible_loss(charge_il, ntng):
    tiny_cfg, synthetic_table = ntng.tiny_cfg, ntng.synthetic_table
    table = synthetic_table(tiny_cfg())
    trainer = fake_trainer(batch_size=4, clock=RSTClock(table))
    hook = RhoLoss(select=0.5, charge_il=charge_il)
    hook.il_model = GPT(GPTConfig(vocab_size=50, d_model=16, n_layers=4, n_heads=2)).eval()
    tokens = np.random.default_rng(5).integers(0, 50, 4001).astype(np.int32)
    hook.mega = RandomWindows(tokens, 17, 8, 0)
    chosen = hook.micro_batch(trainer, 7)
    mega = hook.mega.batch(7)
    score = per_example_loss(trainer.model, mega) - per_example_loss(hook.il_model, mega)
    top = set(torch.topk(score, 4).indices.tolist())
    rows = {i for i in range(8) for r in chosen["input_ids"] if torch.equal(mega["input_ids"][i], r)}
    assert rows == top
    assert trainer.clock.seconds == pytest.approx((2 if charge_il else 1) * 8 / 3 * table.forward[-1])


def test_rho_trains_the_il_model_on_a_held_out_split_and_reuses_it(tmp_path, ntng):
    tiny_cfg = ntng.tiny_cfg
    cfg = tiny_cfg("trainer.max_steps=1")
    trainer = Trainer(cfg, tmp_path, hooks=[build_method("rho", il_steps=2)])
    n = len(trainer.val_tokens)  # noqa: F841 (validation is untouched)
    hook = trainer.hooks[0]
    assert (tmp_path / "il_model" / "model.safetensors").is_file()
    again = Trainer(cfg, tmp_path, hooks=[build_method("rho", il_steps=2)]).hooks[0]
    for a, b in zip(hook.il_model.parameters(), again.il_model.parameters()):
        assert torch.equal(a, b)
    full = Trainer(cfg, tmp_path / "plain")
    assert len(trainer.train_tokens) == int(0.8 * len(full.train_tokens))


@pytest.mark.parametrize("preset", ["gpt-shakespeare.yaml", "t5-shakespeare.yaml", "bert-shakespeare.yaml"])
def test_per_example_loss_and_layer_stacks_for_every_family(tmp_path, preset, ntng):
    from leanformer.models.registry import build_model

    ROOT, tiny_cfg = ntng.ROOT, ntng.tiny_cfg
    cfg = tiny_cfg(preset=ROOT / "configs" / preset)
    model = build_model(cfg.model).eval()
    tokens = np.random.default_rng(1).integers(0, 256, 5000).astype(np.int32)
    from leanformer.data import get_tokenizer

    batch = model.objective(get_tokenizer("byte"), cfg.data.seq_len).batches(tokens, 3, 0).batch(0)
    losses = per_example_loss(model, batch)
    counts = (batch["labels"] != -100).sum(1).float()
    mean, _ = model.compute_loss(batch)
    torch.testing.assert_close((losses * counts).sum() / counts.sum(), mean.detach())
    assert len(layer_stacks(model)) == (2 if preset.startswith("t5") else 1)
