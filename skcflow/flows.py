"""Conditional normalizing flows: the decoders of CFLOW-AD.

A :class:`ConditionalFlow` maps a feature vector ``x`` (a "fiber" of a CNN
feature map) to a latent ``u`` that should be standard normal for normal data,
conditioned on a positional encoding of where the fiber was taken. The change
of variables gives exact log-likelihoods (section 4.2 of the paper):
``log p(x | c) = log N(u; 0, I) + log |det du/dx|``.

The condition enters each coupling layer's subnet only through its first
linear layer, and it depends on the position alone. So the flow projects the
condition for all coupling layers at once, in one matrix product, and the
couplings receive it as a ready-made bias: at inference this is computed once
per feature-map size instead of once per fiber, an exact rewrite that removes
most of the decoder's multiply-adds for narrow feature levels.

A :class:`PositionWhitening` in front of a flow is a fixed, exactly
invertible affine layer per position; its log-determinant adds to the flow's.
"""

import math

import torch
from torch import nn

_LOG_2PI = math.log(2 * math.pi)
# Floats of the padded batches in which PositionWhitening.at whitens.
_PADDED_FLOATS = 2**22
# PositionWhitening.forward whitens this many images at once, in products of
# one fixed shape (a group short of images padded with zeros), so that each
# whitener is read once per group rather than once per image: an image's
# result is then the same in any batch, in any slot of a group and beside
# any other images (measured bit for bit). On a CPU, at efficientnet_lite0's
# levels (1024 positions of 40 dimensions and 256 of 112), 8 images cost
# 0.115 and 0.158 ms each in groups of 8 against 0.175 and 0.197 in groups
# of 4 (a CFlowAD worker scores 8 at once), and one image alone 0.76 and
# 1.14 ms against 0.61 and 0.74 (timed before the whiteners were stored
# transposed). Groups (and CFlowAD's pieces) of 16 halve the whiteners'
# reads, but saved only 4.5% of 32 maps' time on two workers and would pad
# a single image to 16.
_WHITEN_GROUP = 8


def positional_encoding(dim, height, width):
    """2D sine/cosine positional encoding of a ``height x width`` grid.

    Half of the ``dim`` channels encode the column and half the row, each as
    sin/cos pairs at geometrically spaced frequencies (the transformer
    encoding applied per axis), so every grid position gets a unique vector.

    Returns
    -------
    encoding : torch.Tensor of shape (height * width, dim)
        Row-major over the grid, matching ``feature_map.flatten(2)``.
    """
    if dim % 4:
        raise ValueError(f"the condition dimension must be a multiple of 4; got {dim}.")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(n):
        angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows = axis(height)[:, None, :].expand(height, width, 2 * quarter)
    cols = axis(width)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([cols, rows], dim=2).reshape(height * width, dim).float()


class ActNorm(nn.Module):
    """Per-dimension affine standardisation, initialised from data.

    Starting the flow at the data's mean and scale (Glow's ActNorm) makes
    the first iterations model the residual structure rather than the
    feature's offset, which shortens training a lot.
    """

    def __init__(self, dim):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize(self, x):
        self.loc.copy_(x.mean(0))
        self.log_scale.copy_(x.std(0).clamp_min(1e-6).log())

    def forward(self, x):
        return (x - self.loc) * torch.exp(-self.log_scale), -self.log_scale.sum().expand(x.shape[:-1])

    def inverse(self, u):
        return u * torch.exp(self.log_scale) + self.loc


class PositionWhitening(nn.Module):
    """A fixed per-position affine map: ``u = L_p^-1 (x - m_p)``.

    ``m_p`` and ``L_p L_p' = S_p`` are the mean and (regularised) covariance
    of the training vectors at position ``p``, so ``u`` is standard normal
    at every position to second order and the flows after it only model what
    a Gaussian per position misses. Feature statistics vary from position
    to position more than a positional encoding lets a flow learn in a
    practical number of steps (a full covariance per position is what
    separates magnetic-tile defects from normal texture).

    Parameters
    ----------
    n_positions, dim : int
        Positions of the feature map and size of its vectors.
    """

    def __init__(self, n_positions, dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_positions, dim))
        # Laid out transposed (each matrix column by column): the products
        # multiply by the transpose, which bmm reads 1.6 times as fast
        # contiguous as transposed (efficientnet_lite0's levels, groups of
        # 8 images, one thread). Loading a state copies into this layout.
        self.register_buffer("whitener", torch.eye(dim).repeat(n_positions, 1, 1).transpose(1, 2))

    @torch.no_grad()
    def initialize(self, moments, reg, shrinkage=0.0):
        """Set the map from :class:`~skcflow.gaussian.PositionMoments`
        (see :meth:`~skcflow.gaussian.PositionMoments.cholesky_factors`)."""
        self.mean.copy_(moments.mean())
        for part, factor in moments.cholesky_factors(reg, shrinkage):
            eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
            self.whitener[part] = torch.linalg.solve_triangular(factor, eye, upper=False).to(self.whitener)

    def at(self, x, positions):
        """Whiten vectors ``(K, dim)``, each at its own flat position ``(K,)``."""
        # Grouped by position into padded (positions, most, dim) batches, so
        # that each whitener is read once and the cost is one product per
        # chunk of positions, whether a training step's few vectors per
        # position come or a reservoir's thousands.
        dim, n_positions = x.shape[1], len(self.mean)
        order = positions.argsort(stable=True)
        counts = torch.bincount(positions, minlength=n_positions)
        ends = counts.cumsum(0).tolist()
        by_position = positions[order]
        rank = torch.arange(len(x), device=x.device) - (counts.cumsum(0) - counts)[by_position]
        most = int(counts.max()) if len(x) else 0
        step = max(1, _PADDED_FLOATS // max(1, most * dim))
        out = torch.empty_like(x)
        for first in range(0, n_positions, step):
            last = min(first + step, n_positions)
            group = slice(ends[first - 1] if first else 0, ends[last - 1])
            rows, where = order[group], (by_position[group] - first, rank[group])
            padded = x.new_zeros(last - first, most, dim)
            padded[where] = x[rows] - self.mean[by_position[group]]
            out[rows] = torch.bmm(padded, self.whitener[first:last].transpose(1, 2))[where]
        return out

    def whiten_set(self, x):
        """Whiten ``(N, P, dim)`` vectors as one set: one product per
        position over all ``N`` images.

        The same map as :meth:`forward` up to rounding, and on a CPU 2 to 3
        times faster on a level's training maps (a matrix product per
        position rather than a vector product per image and position); but
        an image's rounding then depends on the other images, so this is
        for training samples, never for an image's map.
        """
        by_position = torch.bmm((x - self.mean).transpose(0, 1), self.whitener.transpose(1, 2))
        return by_position.transpose(0, 1).contiguous()

    def log_det(self):
        """``log |det du/dx|`` per position, ``(P,)``."""
        return self.whitener.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def forward(self, x):
        """Whiten ``(N, P, dim)`` vectors, position by position."""
        whitener_t = self.whitener.transpose(1, 2)
        if torch.compiler.is_exporting():
            # An exported graph's runtime multiplies each image's vector at
            # each position on its own, however many images there are.
            return torch.matmul((x - self.mean)[..., None, :], whitener_t)[..., 0, :]
        # Not all images in one product: torch's products round differently
        # for each number of rows, and an image's map must not depend on
        # its batch. Each group's rows are laid out position by position
        # (on transposed rows bmm takes a slow path), centred on the way.
        n_images, n_positions, dim = x.shape
        out = torch.empty_like(x)
        rows = x.new_empty(n_positions, _WHITEN_GROUP, dim)
        for first in range(0, n_images, _WHITEN_GROUP):
            group = x[first : first + _WHITEN_GROUP].transpose(0, 1)
            torch.sub(group, self.mean[:, None], out=rows[:, : group.shape[1]])
            # The values of a short group's padding change no other row's result.
            rows[:, group.shape[1] :] = 0
            out[first : first + _WHITEN_GROUP] = torch.bmm(rows, whitener_t)[:, : group.shape[1]].transpose(0, 1)
        return out


class AffineCoupling(nn.Module):
    """One conditional affine coupling layer.

    The first half of the vector passes through unchanged and, with the
    condition, parameterises a scale and shift of the second half. The log
    scale is soft-clamped to ``(-clamp, clamp)`` with ``atan`` (as FrEIA's
    blocks do) so no single layer can blow the likelihood up.

    Parameters
    ----------
    dim : int
        Size of the feature vector.
    hidden_dim : int
        Width of the subnet's hidden layer.
    clamp : float
        Bound of the log scale.
    activation : {"relu", "softplus"}
        Nonlinearity of the subnet.
    """

    def __init__(self, dim, hidden_dim, clamp, activation):
        super().__init__()
        self.split = dim // 2
        self.clamp = clamp
        # The condition's projection (the flow adds it) carries the bias.
        self.inp = nn.Linear(self.split, hidden_dim, bias=False)
        # In place: the hidden layer is the widest tensor of the coupling,
        # and a pass that writes a new one costs several that do not.
        self.act = nn.ReLU(inplace=True) if activation == "relu" else nn.Softplus()
        self.out = nn.Linear(hidden_dim, 2 * (dim - self.split))
        # Zero output weights start every coupling as the identity.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _scale_shift(self, x1, cond_bias):
        # The condition's bias is added after the product, not inside it
        # (addmm): a bias per position then broadcasts over any number of
        # images' vectors instead of being copied for each.
        hidden = torch.matmul(x1, self.inp.weight.t())
        hidden += cond_bias
        s, t = self.out(self.act(hidden)).chunk(2, dim=-1)
        return torch.atan(s / self.clamp).mul_(self.clamp * (2 / math.pi)), t

    def forward(self, x, cond_bias):
        """``(y, s)``: the transformed vectors and the log scales of their
        second half, whose sum over the last axis is ``log |det dy/dx|``."""
        x1, x2 = x[..., : self.split], x[..., self.split :]
        s, t = self._scale_shift(x1, cond_bias)
        return torch.cat([x1, torch.addcmul(t, x2, torch.exp(s))], dim=-1), s

    def inverse(self, u, cond_bias):
        u1, u2 = u[..., : self.split], u[..., self.split :]
        s, t = self._scale_shift(u1, cond_bias)
        return torch.cat([u1, (u2 - t) * torch.exp(-s)], dim=-1)


class ConditionalFlow(nn.Module):
    """A CFLOW decoder: ActNorm, then coupling layers with fixed permutations.

    Parameters
    ----------
    dim : int
        Size of the feature vectors (``D_k``).
    condition_dim : int
        Size of the positional encoding (``C_k``).
    n_coupling_layers : int
        Number of affine coupling layers.
    hidden_dim : int
        Width of each coupling subnet's hidden layer.
    clamp : float
        Soft bound of each coupling's log scale.
    activation : {"relu", "softplus"}
        Nonlinearity of the subnets.
    generator : torch.Generator, optional
        Source of the fixed permutations and initial weights' randomness.
    """

    def __init__(self, dim, condition_dim, n_coupling_layers, hidden_dim, clamp,
                 activation="relu", generator=None):
        super().__init__()
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.norm = ActNorm(dim)
        self.couplings = nn.ModuleList(
            AffineCoupling(dim, hidden_dim, clamp, activation) for _ in range(n_coupling_layers)
        )
        # One projection for all couplings' conditions: a single matmul.
        self.condition_proj = nn.Linear(condition_dim, n_coupling_layers * hidden_dim)
        perms = torch.stack([torch.randperm(dim, generator=generator) for _ in self.couplings])
        self.register_buffer("perms", perms)
        self.register_buffer("inverse_perms", torch.argsort(perms, dim=1))

    def condition(self, encoding):
        """Project positional encodings to every coupling's bias.

        Parameters
        ----------
        encoding : torch.Tensor of shape (..., condition_dim)

        Returns
        -------
        biases : tuple of torch.Tensor of shape (..., hidden_dim)
            One per coupling layer.
        """
        return self.condition_proj(encoding).split(self.hidden_dim, dim=-1)

    def forward(self, x, biases):
        """Map features to the latent space.

        Parameters
        ----------
        x : torch.Tensor of shape (..., dim)
        biases : tuple of torch.Tensor of shape (..., hidden_dim)
            From :meth:`condition`, broadcastable against ``x``'s vectors:
            one row per vector, or one per position for ``(n_images,
            n_positions, dim)`` vectors.

        Returns
        -------
        u : torch.Tensor of shape (..., dim)
        log_det : torch.Tensor of shape (...)
            ``log |det du/dx|``.
        """
        u, log_det = self._couplings(x, biases)
        return u.gather(-1, self.perms[-1].expand(u.shape)), log_det

    def _couplings(self, x, biases):
        """:meth:`forward` but for the last permutation."""
        u, log_det = self.norm(x)
        # The couplings' log scales are added up elementwise and summed over
        # the vector once: one reduction instead of one per coupling.
        scales = None
        for k, (coupling, bias) in enumerate(zip(self.couplings, biases)):
            if k:
                # gather, not u[..., perm]: the same copy, about 5 times
                # faster on a CPU (advanced indexing takes a general path).
                u = u.gather(-1, self.perms[k - 1].expand(u.shape))
            u, s = coupling(u, bias)
            scales = s if scales is None else scales.add_(s)
        return u, log_det + scales.sum(-1)

    def inverse(self, u, biases):
        """Map latents back to features (the generative direction)."""
        for coupling, inverse_perm, bias in zip(
            reversed(self.couplings), reversed(self.inverse_perms), reversed(biases)
        ):
            u = coupling.inverse(u[..., inverse_perm], bias)
        return self.norm.inverse(u)

    def log_prob(self, x, biases):
        """Log-likelihood per dimension, ``log p(x | c) / dim``.

        Dividing by the dimension puts levels of different widths on one
        scale, as the paper's code does before turning them into
        probabilities.
        """
        # The last permutation changes no sum of squares: it is left out.
        u, log_det = self._couplings(x, biases)
        return (log_det - 0.5 * (u.square().sum(-1) + self.dim * _LOG_2PI)) / self.dim
