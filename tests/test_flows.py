import math

import pytest
import torch

from skcflow.flows import ActNorm, ConditionalFlow, positional_encoding


def _random_flow(dim=6, condition_dim=8, n_layers=3, activation="relu", seed=0):
    """A flow whose every weight is random, so no coupling is the identity."""
    torch.manual_seed(seed)
    flow = ConditionalFlow(dim, condition_dim, n_layers, hidden_dim=16, clamp=1.9,
                           activation=activation, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return flow.double()


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_log_det_matches_autograd_jacobian(activation):
    flow = _random_flow(activation=activation)
    condition = torch.randn(5, 8, dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64)
    _, log_det = flow(x, flow.condition(condition))
    for i in range(len(x)):
        biases = [b[i : i + 1] for b in flow.condition(condition)]
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], biases)[0][0], x[i])
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-9)


def test_inverse_undoes_forward():
    flow = _random_flow(dim=7, n_layers=5)
    biases = flow.condition(torch.randn(11, 8, dtype=torch.float64))
    x = torch.randn(11, 7, dtype=torch.float64) * 3
    u, _ = flow(x, biases)
    assert not torch.allclose(u, x)
    assert torch.allclose(flow.inverse(u, biases), x, atol=1e-10)


def test_fresh_flow_is_the_actnorm_gaussian():
    # Couplings start as the identity, so the flow is a diagonal Gaussian
    # with the data's mean and standard deviation.
    torch.manual_seed(0)
    data = torch.randn(5000, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + 7
    flow = ConditionalFlow(4, 8, 2, 16, 1.9)
    flow.norm.initialize(data)
    x = data[:10]
    biases = flow.condition(torch.randn(10, 8))
    expected = torch.distributions.Normal(data.mean(0), data.std(0)).log_prob(x).sum(1) / 4
    assert torch.allclose(flow.log_prob(x, biases), expected, atol=1e-4)


def test_density_integrates_to_one():
    # A 2-D flow's density, integrated on a fine grid, must sum to 1.
    flow = _random_flow(dim=2, condition_dim=4, n_layers=4)
    grid = torch.linspace(-12, 12, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.ravel(), yy.ravel()], 1)
    condition = torch.randn(1, 4, dtype=torch.float64).expand(len(points), 4)
    with torch.no_grad():
        density = torch.exp(2 * flow.log_prob(points, flow.condition(condition)))
    assert float(density.sum() * (grid[1] - grid[0]) ** 2) == pytest.approx(1.0, abs=1e-3)


def test_positional_encoding_is_unique_and_bounded():
    enc = positional_encoding(32, 16, 12)
    assert enc.shape == (16 * 12, 32)
    assert enc.abs().max() <= 1
    assert len(torch.unique(enc, dim=0)) == 16 * 12
    # Row-major: neighbours along a row differ only in the column channels.
    assert torch.equal(enc[0, 16:], enc[1, 16:])
    assert not torch.equal(enc[0, :16], enc[1, :16])


def test_positional_encoding_rejects_bad_dim():
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding(30, 4, 4)


def test_actnorm_standardises():
    data = torch.randn(1000, 3) * 5 + 2
    norm = ActNorm(3)
    norm.initialize(data)
    u, log_det = norm(data)
    assert torch.allclose(u.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(u.std(0), torch.ones(3), atol=1e-5)
    assert torch.allclose(log_det, -torch.log(data.std(0)).sum().expand(1000))
    assert math.isclose(float((norm.inverse(u) - data).abs().max()), 0, abs_tol=1e-4)
