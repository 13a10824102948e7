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


def _whitening(x, reg=1e-3, shrinkage=0.0):
    whitening = PositionWhitening(P, D).double()
    whitening.initialize(_moments(x), reg, shrinkage)
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


@pytest.mark.parametrize("padded_floats", [2**22, 2 * D])
def test_whitening_at_given_positions_matches_whitening_the_maps(vectors, monkeypatch, padded_floats):
    # A small padded batch makes at() whiten a position at a time.
    monkeypatch.setattr("skcflow.flows._PADDED_FLOATS", padded_floats)
    whitening = _whitening(vectors)
    expected = whitening(vectors)
    generator = torch.Generator().manual_seed(0)
    # Positions drawn with repeats, one never drawn, in no order.
    image = torch.randint(N, (40,), generator=generator)
    position = torch.randint(P - 1, (40,), generator=generator)
    got = whitening.at(vectors[image, position], position)
    torch.testing.assert_close(got, expected[image, position])
    assert whitening.at(vectors[0, :0], position[:0]).shape == (0, D)


@pytest.mark.parametrize("shrinkage", [0.0, 0.4])
def test_leave_one_out_whitening_matches_refitting_without_the_vector(vectors, shrinkage):
    reg = 1e-3
    average = _moments(vectors).average_covariance()
    whitening = _whitening(vectors, reg, shrinkage)
    u = whitening(vectors)
    u_loo, shift = leave_one_out_whitened(u, N, sample_share=1 - shrinkage)
    for i in range(N):
        others = torch.cat([vectors[:i], vectors[i + 1 :]])
        for p in range(P):
            # The leave-one-out scatter, with the full set's divisor (n - 1)
            # and shrinkage target, as the closed form takes them.
            mean = others[:, p].mean(0)
            scatter = (others[:, p] - mean).T @ (others[:, p] - mean)
            cov = (1 - shrinkage) * scatter / (N - 1) + shrinkage * average
            factor = torch.linalg.cholesky(cov + reg * torch.eye(D, dtype=torch.float64))
            expected = torch.linalg.solve_triangular(
                factor, (vectors[i, p] - mean)[:, None], upper=False)[:, 0]
            assert torch.allclose(u_loo[i, p], expected, atol=1e-8)
            log_det = -torch.log(factor.diagonal()).sum()
            assert torch.isclose(whitening.log_det()[p] + shift[i, p], log_det, atol=1e-8)


def test_average_covariance_is_the_mean_of_the_positions(vectors):
    expected = torch.stack([torch.cov(vectors[:, p].T) for p in range(P)]).mean(0)
    assert torch.allclose(_moments(vectors).average_covariance(), expected, atol=1e-10)


def test_shrinkage_is_ledoit_wolfs_intensity(vectors):
    # Computed directly: the spread of each vector's outer product around
    # its position's (biased) covariance, over the distance to the average.
    spread, distance = 0.0, 0.0
    covs = [torch.cov(vectors[:, p].T, correction=0) for p in range(P)]
    average = torch.stack(covs).mean(0)
    for p, cov in enumerate(covs):
        centred = vectors[:, p] - vectors[:, p].mean(0)
        spread += sum(((x[:, None] * x[None, :] - cov) ** 2).sum() for x in centred) / N**2
        distance += ((cov - average) ** 2).sum()
    expected = min(float(spread / distance), 1.0)
    assert 0 < expected < 1
    assert _moments(vectors).shrinkage() == pytest.approx(expected, rel=1e-8)


def test_shrinkage_keeps_few_vectors_well_conditioned():
    torch.manual_seed(1)
    positions, dim = 32, 20
    # Each position has its own scales, so its own covariance is the best
    # estimate once vectors are many.
    scales = torch.rand(positions, dim, dtype=torch.float64) * 2 + 0.5
    new = torch.randn(50, positions, dim, dtype=torch.float64) * scales
    mean_squares, intensities = {}, {}
    for n in (4, 2000):
        sample = torch.randn(n, positions, dim, dtype=torch.float64) * scales
        moments = PositionMoments.of(sample.split(500))
        intensities[n] = moments.shrinkage()
        for shrinkage in (0.0, intensities[n]):
            whitening = PositionWhitening(positions, dim).double()
            whitening.initialize(PositionMoments.of(sample.split(500)), 0.01, shrinkage)
            mean_squares[n, shrinkage] = float(whitening(new).square().mean())
    # Four vectors span 3 of 20 directions per position: new ones look like
    # outliers to those covariances, not once they are mostly the average
    # over positions (128 vectors). Many vectors need little of it.
    assert intensities[4] > 0.5 and intensities[2000] < 0.1
    assert mean_squares[4, 0.0] > 20 and mean_squares[4, intensities[4]] < 3
    assert abs(mean_squares[2000, intensities[2000]] - 1) < 0.1


def test_non_positive_definite_covariance_is_refused():
    moments = PositionMoments(1, 2, torch.device("cpu"))
    moments.update(torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match="not positive definite"):
        list(moments.cholesky_factors(-1.0))


@pytest.mark.parametrize("dim", [8, 40, 130])
def test_whitening_of_images_in_groups_is_the_same_in_any_batch(dim):
    # forward whitens flows._WHITEN_GROUP images per product: an image's
    # result must not depend on its group's other images, their number or
    # its slot, and must be L^-1 (x - m).
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, dim, generator=generator)
    whitening = PositionWhitening(64, dim)
    whitening.mean.normal_(generator=generator)
    whitening.whitener.copy_(torch.randn(64, dim, dim, generator=generator).tril())
    expected = torch.einsum("pij,npj->npi", whitening.whitener.double(), (x - whitening.mean).double())
    got = whitening(x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    for i in range(len(x)):
        assert torch.equal(whitening(x[i : i + 1]), got[i : i + 1])
    assert torch.equal(torch.cat([whitening(x[:2]), whitening(x[2:])]), got)
    others = torch.randn(7, 64, dim, generator=generator)
    assert torch.equal(whitening(torch.cat([others[:3], x[4:5], others[3:]]))[3], got[4])
    # A training sample's whitening, all images at once, is the same map.
    together = whitening.whiten_set(x)
    assert together.shape == x.shape and together.is_contiguous()
    torch.testing.assert_close(together.double(), expected, rtol=1e-5, atol=1e-4)
