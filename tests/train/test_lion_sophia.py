"""Lion and Sophia-G against steps computed by hand."""

import pytest
import torch

from leanformer.config import OptimConfig
from leanformer.errors import ConfigError
from leanformer.train.optim import build_optimizer
from leanformer.train.optim.lion import Lion
from leanformer.train.optim.sophia import SophiaG, sampled_label_loss


def test_lion_two_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1)
    p.grad = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    opt.step()
    # p * (1 - 0.01) - 0.1 * sign(0.1 g); m = 0.01 g = [0.005, -0.01, 0]
    torch.testing.assert_close(p.data, torch.tensor([0.89, -1.88, 0.495], dtype=torch.float64))
    p.grad = torch.tensor([-0.01, 0.2, 0.3], dtype=torch.float64)
    opt.step()
    # c = 0.9 m + 0.1 g = [0.0035, 0.011, 0.03]: momentum outweighs the first coordinate's negative gradient
    torch.testing.assert_close(p.data, torch.tensor([0.7811, -1.9612, 0.39005], dtype=torch.float64))
    torch.testing.assert_close(opt.state[p]["exp_avg"],
                               torch.tensor([0.99 * 0.005 - 0.0001, -0.0099 + 0.002, 0.003], dtype=torch.float64))


def test_sophia_sign_step_then_clipped_preconditioned_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = SophiaG([p], lr=0.1, betas=(0.5, 0.5), rho=0.5, bs=2)
    p.grad = torch.tensor([0.2, -0.4], dtype=torch.float64)
    opt.step()  # h = 0: a sign step
    torch.testing.assert_close(p.data, torch.tensor([0.9, -0.9], dtype=torch.float64))
    p.grad = torch.tensor([1.0, 0.1], dtype=torch.float64)
    opt.update_hessian()  # h = 0.5 * g^2 = [0.5, 0.005]
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([0.5, 0.005], dtype=torch.float64))
    p.grad = torch.tensor([0.2, -0.4], dtype=torch.float64)
    opt.step()
    # m = [0.15, -0.3]; rho * bs * h = [0.5, 0.005]; ratio = [0.3, min(60, 1)]
    torch.testing.assert_close(p.data, torch.tensor([0.87, -0.8], dtype=torch.float64))


def test_registered_names_and_bad_values():
    model = torch.nn.Linear(3, 2)
    assert isinstance(build_optimizer(model, OptimConfig(name="lion")), Lion)
    opt = build_optimizer(model, OptimConfig(name="sophia", rho=0.01, hessian_every=5))
    assert isinstance(opt, SophiaG) and opt.hessian_every == 5 and opt.param_groups[0]["rho"] == 0.01
    with pytest.raises(ConfigError, match="optim.name: 'lamb' is not allowed"):
        from leanformer.config import from_dict

        from_dict(OptimConfig, {"name": "lamb"}, prefix="optim")
    with pytest.raises(ConfigError, match="Lion: lr=-1"):
        Lion(model.parameters(), lr=-1)


def test_sampled_label_loss_samples_from_the_model_and_keeps_ignored_positions():
    logits = torch.full((2, 5, 4), -30.0)
    logits[..., 2] = 30.0  # the model is sure of class 2: sampled labels are 2, loss ~ 0
    labels = torch.tensor([[1, -100, 0, 3, -100], [-100, -100, -100, -100, 2]])
    g = torch.Generator().manual_seed(0)
    assert float(sampled_label_loss(logits, labels, g)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 4000, 4, requires_grad=True)
    loss = sampled_label_loss(uniform, torch.zeros(1, 4000, dtype=torch.long), g)
    assert float(loss.detach()) == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-5)
    loss.backward()  # summed over positions: 1/4 - frequency of each class, ~0 when y ~ softmax (4 sigma)
    assert uniform.grad.sum(1).abs().max() < 4 * (0.25 * 0.75 / 4000) ** 0.5
