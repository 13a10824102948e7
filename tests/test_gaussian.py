import pytest
import torch

from skcflow.flows import PositionWhitening
from skcflow.gaussian import PositionMoments, leave_one_out_whitened

N, P, D = 12, 3, 5


@pytest.fixture
def vectors():
    torch.manual_seed(0)
    mixing = torch.randn(P, D, D, dtype=torch.float64)
    shift = torch.randn(P, D, dtype=torch.float64) * 3
    return (torch.einsum("npd,ped->npe", torch.randn(N, P, D, dtype=torch.float64), mixing)
            + shift)


def _moments(x):
    moments = PositionMoments(P, D, torch.device("cpu"))
    for chunk in x.split(5):
        moments.update(chunk)
    return moments


def _whitening(x, reg=1e-3, prior_weight=0):
    whitening = PositionWhitening(P, D).double()
    whitening.initialize(_moments(x), reg, prior_weight)
    return whitening


def test_whitening_standardises_every_position(vectors):
    whitening = _whitening(vectors, reg=1e-9)
    u = whitening(vectors)
    assert torch.allclose(u.mean(0), torch.zeros(P, D, dtype=torch.float64), atol=1e-8)
    for p in range(P):
        assert torch.allclose(torch.cov(u[:, p].T), torch.eye(D, dtype=torch.float64), atol=1e-6)
        expected = -0.5 * torch.linalg.slogdet(torch.cov(vectors[:, p].T)).logabsdet
        assert torch.isclose(whitening.log_det()[p], expected, atol=1e-6)


def test_whitening_of_an_image_does_not_depend_on_its_batch(vectors):
    whitening = _whitening(vectors)
    assert torch.equal(whitening(vectors[3:4]), whitening(vectors)[3:4])


@pytest.mark.parametrize("prior_weight", [0, 7])
def test_leave_one_out_whitening_matches_refitting_without_the_vector(vectors, prior_weight):
    reg = 1e-3
    moments = _moments(vectors)
    prior = moments.pooled_covariance()
    whitening = _whitening(vectors, reg, prior_weight)
    u = whitening(vectors)
    u_loo, shift = leave_one_out_whitened(u, N, sample_share=(N - 1) / (N - 1 + prior_weight))
    for i in range(N):
        others = torch.cat([vectors[:i], vectors[i + 1 :]])
        for p in range(P):
            # The leave-one-out scatter, with the full set's divisor (n - 1)
            # and prior, as the closed form takes them.
            mean = others[:, p].mean(0)
            scatter = (others[:, p] - mean).T @ (others[:, p] - mean)
            cov = (scatter + prior_weight * prior) / (N - 1 + prior_weight)
            factor = torch.linalg.cholesky(cov + reg * torch.eye(D, dtype=torch.float64))
            expected = torch.linalg.solve_triangular(
                factor, (vectors[i, p] - mean)[:, None], upper=False)[:, 0]
            assert torch.allclose(u_loo[i, p], expected, atol=1e-8)
            log_det = -torch.log(factor.diagonal()).sum()
            assert torch.isclose(whitening.log_det()[p] + shift[i, p], log_det, atol=1e-8)


def test_prior_keeps_few_vectors_well_conditioned():
    torch.manual_seed(1)
    positions, dim = 32, 20
    few = torch.randn(4, positions, dim, dtype=torch.float64)
    new = torch.randn(50, positions, dim, dtype=torch.float64)
    mean_squares = []
    for prior_weight in (0, dim):
        moments = PositionMoments(positions, dim, torch.device("cpu"))
        moments.update(few)
        whitening = PositionWhitening(positions, dim).double()
        whitening.initialize(moments, 0.01, prior_weight)
        mean_squares.append(whitening(new).square().mean())
    # Four vectors span 3 of 20 directions per position: new ones look like
    # outliers to those covariances, not once the pooled one (128 vectors)
    # fills the other directions.
    assert mean_squares[0] > 20 and mean_squares[1] < 3


def test_non_positive_definite_covariance_is_refused():
    moments = PositionMoments(1, 2, torch.device("cpu"))
    moments.update(torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match="not positive definite"):
        list(moments.cholesky_factors(-1.0))
