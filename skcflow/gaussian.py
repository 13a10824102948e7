"""Multivariate Gaussians per feature-map position, fitted in one pass.

PaDiM scores positions by their Mahalanobis distance to these Gaussians, and
CFlowAD whitens each position's features with them before its flows.
"""

import torch

# Positions whose covariances are factorised at once: bounds the float64
# intermediates to this many d x d matrices, whatever the image size.
_POSITION_CHUNK = 256
# Rounding can put a training vector just past a leave-one-out downdate's
# limit, where the downdated covariance would stop being positive definite.
_MIN_REMAINING = 1e-12


class PositionMoments:
    """Running float64 sums of vectors and of their outer products per position.

    They are sufficient for the mean and covariance at every position and
    for the Ledoit-Wolf shrinkage intensity, so images can be added a batch
    at a time (a streaming or incremental fit) with the same result as all
    at once, up to rounding.

    Parameters
    ----------
    n_positions, dim : int
        Positions and size of the vectors.
    device : torch.device
        Where the sums live.
    """

    @classmethod
    def of(cls, batches):
        """The moments of an iterable of ``(B, P, dim)`` batches."""
        moments = None
        for x in batches:
            if moments is None:
                moments = cls(x.shape[1], x.shape[2], x.device)
            moments.update(x)
        return moments

    @classmethod
    def of_gaussians(cls, count, mean, covariance):
        """Moments that ``count`` vectors with this mean and (unbiased) covariance
        per position would have; the fourth-order sums are left at zero, so
        :meth:`shrinkage` cannot be used on them."""
        moments = cls(*mean.shape, mean.device)
        mean = mean.double()
        moments.count = count
        moments.total = count * mean
        moments.outer = (count - 1) * covariance.double() + count * mean[:, :, None] * mean[:, None, :]
        return moments

    def __init__(self, n_positions, dim, device):
        # float64: the covariance is a difference, E[xx'] - mm', which
        # cancels most of the digits float32 would keep.
        self.count = 0
        self.total = torch.zeros(n_positions, dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(n_positions, dim, dim, dtype=torch.float64, device=device)
        # For the shrinkage intensity in one pass: sums of |x|^2, |x|^4 and |x|^2 x.
        self.norm2 = torch.zeros(n_positions, dtype=torch.float64, device=device)
        self.norm4 = torch.zeros(n_positions, dtype=torch.float64, device=device)
        self.norm2_x = torch.zeros(n_positions, dim, dtype=torch.float64, device=device)

    def update(self, x):
        """Add a batch of vectors ``(B, P, dim)``."""
        x = x.double().transpose(0, 1)
        squares = x.square().sum(-1)
        self.count += x.shape[1]
        self.total += x.sum(1)
        self.outer.baddbmm_(x.transpose(1, 2), x)
        self.norm2 += squares.sum(1)
        self.norm4 += squares.square().sum(1)
        self.norm2_x += (squares[:, :, None] * x).sum(1)

    def mean(self):
        """Mean vector per position, ``(P, dim)`` float64."""
        return self.total / self.count

    def _covariances(self, part):
        """Biased (divisor ``n``) covariances of the positions in ``part``."""
        m = self.total[part] / self.count
        return self.outer[part] / self.count - m[:, :, None] * m[:, None, :]

    def average_covariance(self):
        """Mean of the positions' covariances, ``(dim, dim)``, divisor ``n - 1``."""
        total = sum(self._covariances(part).sum(0) for part in self._parts())
        return total / len(self.total) * self.count / max(self.count - 1, 1)

    def shrinkage(self):
        """Ledoit-Wolf intensity of shrinking the covariances to their average.

        The share ``delta`` of :meth:`average_covariance` in
        ``(1 - delta) S_p + delta S_average`` that minimises the expected
        squared error of the positions' covariances, estimated from the
        spread of the vectors' outer products around them (Ledoit and Wolf,
        "A well-conditioned estimator for large-dimensional covariance
        matrices", 2004), with one intensity for all positions. It falls
        as vectors outnumber dimensions: few vectors get mostly the average.
        The spread's sum of ``|x - m|^4`` is expanded in the running sums,
        so no second pass over the vectors is needed.

        Returns
        -------
        delta : float in [0, 1]
        """
        mean, n = self.mean(), self.count
        mean_norm2 = mean.square().sum(-1)
        mean_outer_mean = torch.einsum("pd,pde,pe->p", mean, self.outer, mean)
        fourth = (self.norm4 - 4 * (mean * self.norm2_x).sum(-1) + 4 * mean_outer_mean
                  + 2 * mean_norm2 * self.norm2 - 4 * mean_norm2 * (mean * self.total).sum(-1)
                  + n * mean_norm2.square())
        average = self.average_covariance() * (n - 1) / n
        spread, distance = 0.0, 0.0
        for part in self._parts():
            cov = self._covariances(part)
            spread += float((fourth[part] / n**2 - cov.square().sum((1, 2)) / n).sum())
            distance += float((cov - average).square().sum())
        return min(max(spread / distance, 0.0), 1.0) if distance > 0 else 1.0

    def _parts(self):
        starts = range(0, len(self.total), _POSITION_CHUNK)
        return [slice(start, start + _POSITION_CHUNK) for start in starts]

    def cholesky_factors(self, reg, shrinkage=0.0):
        """Yield ``(positions, L)``: Cholesky factors of the covariances plus ``reg * I``.

        With ``shrinkage=delta``, each covariance is
        ``(1 - delta) S_p + delta S_average`` (see :meth:`shrinkage`), which
        stays well conditioned when there are few vectors per position.
        Covariances are unbiased, as ``np.cov``'s; a single vector leaves
        only the ridge. The sums are left as they are, so more vectors can
        be added afterwards.
        """
        n, mean = self.count, self.mean()
        ridge = reg * torch.eye(mean.shape[1], dtype=torch.float64, device=mean.device)
        average = shrinkage * self.average_covariance() if shrinkage else 0
        for part in self._parts():
            m = mean[part]
            cov = torch.baddbmm(self.outer[part], m[:, :, None], m[:, None, :], alpha=-n)
            cov.div_(max(n - 1, 1)).mul_(1 - shrinkage).add_(average).add_(ridge)
            factor, info = torch.linalg.cholesky_ex(cov)
            if info.any():
                raise ValueError(
                    f"a covariance is not positive definite with reg={reg}; increase reg."
                )
            yield part, factor


def _downdate_weight(n, sample_share):
    """``a`` of the leave-one-out downdate ``S - a d d'`` of a covariance."""
    return sample_share * n / (n - 1) ** 2


def leave_one_out_squared(squared, n):
    """Squared Mahalanobis distances of training vectors, each left out of its Gaussian.

    The rank-one downdate of :func:`leave_one_out_whitened`, inverted with
    Sherman-Morrison: only the norm of the whitened vector is needed.

    Parameters
    ----------
    squared : torch.Tensor
        In-sample squared distances.
    n : int
        Number of training vectors per Gaussian (at least 3).
    """
    a = _downdate_weight(n, 1.0)
    return (n / (n - 1)) ** 2 * squared / (1 - a * squared).clamp_min(_MIN_REMAINING)


def leave_one_out_whitened(u, n, sample_share=1.0):
    """Whitened training vectors as if each had been left out of its Gaussian.

    A training vector helped fit the mean and covariance that whiten it, so
    it looks more normal than a new one. Removing it is a rank-one downdate
    of the covariance, ``S - a d d'`` with ``a = n / (n - 1)**2`` times the
    share of the covariance that comes from the position's own sample (the
    rest, the shrinkage target, stays). In the
    whitened coordinates ``w = L^-1 d`` (``u`` here), the Cholesky factor of
    ``I - a w w'`` whitens ``w`` to ``w_j / sqrt((1 - a s_(j-1)) (1 - a s_j))``
    with ``s_j`` the partial sums of ``w**2``: the sequential conditional
    standardisation Cholesky whitening is. The covariance's divisor is taken
    as ``n - 1`` throughout, a relative error of ``1 / n``.

    Parameters
    ----------
    u : torch.Tensor of shape (..., dim)
        Training vectors whitened by the Gaussians they helped fit.
    n : int
        Number of training vectors per Gaussian (at least 3).
    sample_share : float, default=1.0
        Weight of the sample covariance in the whitened one: ``1 - delta``
        for :meth:`PositionMoments.cholesky_factors`'s ``shrinkage=delta``.

    Returns
    -------
    u_loo : torch.Tensor of shape (..., dim)
        The vectors whitened by their leave-one-out Gaussians.
    log_det : torch.Tensor of shape (...)
        What to add to the in-sample whitening's ``log |det|``.
    """
    a = _downdate_weight(n, sample_share)
    u = u.double()
    remaining = (1 - a * u.square().cumsum(-1)).clamp_min(_MIN_REMAINING)
    before = torch.cat([torch.ones_like(remaining[..., :1]), remaining[..., :-1]], -1)
    u_loo = u / (before * remaining).sqrt() * (n / (n - 1))
    return u_loo, -0.5 * remaining[..., -1].log()
