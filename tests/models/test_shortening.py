import pytest
import torch

from leanformer.nn.shortening import AvgPool, LinearPool, LinearUp, RepeatUp, fixed_groups, segment_gather, segment_mean


def dense_reference(x, b):
    """The reference implementation's dense ``B x T x S`` assignment (PiotrNawrot/dynamic-pooling), only complete
    segments kept: ``M[t, s] = 1 - (s - c_t)`` where ``s == c_t``, normalised over t."""
    c = b.cumsum(1) - b
    s = int(b.detach().sum(1).max())
    foo = torch.arange(s, dtype=x.dtype)[None, None] - c[..., None]  # (B, T, S)
    m = torch.where(foo == 0, 1 - foo, torch.zeros_like(foo))
    m = m * (torch.arange(s)[None, :] < b.detach().sum(1, keepdim=True))[:, None]  # drop incomplete segments
    m = m / (m.sum(1, keepdim=True) + 1e-9)
    return torch.einsum("bts,btd->bsd", m, x)


def test_segment_mean_matches_the_dense_reference_values_and_gradients():
    x = torch.randn(3, 29, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(3, 29, dtype=torch.float64, requires_grad=True)
    soft = torch.sigmoid(logits)
    b = (soft > 0.6).double() + soft - soft.detach()  # straight-through hard boundaries
    ours, ref = segment_mean(x, b), dense_reference(x, b)
    torch.testing.assert_close(ours, ref)
    w = torch.randn_like(ref)
    g_ours = torch.autograd.grad((ours * w).sum(), (x, logits), retain_graph=True)
    g_ref = torch.autograd.grad((ref * w).sum(), (x, logits))
    torch.testing.assert_close(g_ours, g_ref)
    assert g_ours[1].abs().sum() > 0


def test_segments_are_means_and_gather_gives_the_latest_finished_segment():
    x = torch.arange(7, dtype=torch.float32)[None, :, None]
    b = torch.tensor([[0, 1, 0, 0, 1, 0, 0.]])  # segments [0,1] and [2,3,4]; 5,6 incomplete
    segs = segment_mean(x, b)
    assert segs.flatten().tolist() == [0.5, 3.0]
    short = torch.cat([torch.full((1, 1, 1), -1.0), segs], 1)
    assert segment_gather(short, b).flatten().tolist() == [-1.0, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_boundaries_every_k_reproduce_the_hourglass_groups(k):
    x = torch.randn(2, 4 * k + 2, 6)
    t = torch.arange(x.shape[1])
    b = (t % k == 0).float().expand(2, -1)
    groups = fixed_groups(x, 0, (x.shape[1] - 1) // k, k)
    # group j >= 1 holds positions jk-k+1 .. jk, exactly the segment closed by the boundary at jk
    torch.testing.assert_close(segment_mean(x, b)[:, 1:], AvgPool(6, k)(groups)[:, 1:])
    assert torch.equal(groups[:, 0, :k - 1], torch.zeros(2, k - 1, 6))  # the shift's zeros


def test_resamplers_shapes_and_positions():
    short = torch.randn(2, 4, 8)
    assert torch.equal(RepeatUp(8, 3)(short)[:, 3:6], short[:, 1:2].expand(2, 3, 8))
    assert LinearUp(8, 3)(short).shape == (2, 12, 8)
    assert LinearPool(8, 3)(torch.randn(2, 4, 3, 8)).shape == (2, 4, 8)
    with pytest.raises(ValueError, match="past the 7 positions"):
        fixed_groups(torch.randn(1, 7, 8), 0, 4, 2)
