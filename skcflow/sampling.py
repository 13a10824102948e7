"""Training vectors for CFlowAD's flows: all of them, or a uniform sample of a stream.

A fit on features held in memory draws its training batches from every
training map (:class:`MapSample`, with the paper's random rotations if
asked for). A streaming or incremental fit cannot hold them: it keeps a
bounded reservoir, a uniform sample of all the vectors it has seen with
their positions (:class:`ReservoirSample`). Both give the flows' training
loop the same two draws: vectors to initialise ActNorm, and batches of
whitened vectors with their flat grid positions.
"""

import math

import torch
import torch.nn.functional as F


class MapSample:
    """Every training map of a level, ``(N, H, W, D)``, drawn from uniformly."""

    def __init__(self):
        self._parts, self.fibers, self._whiten, self.rotation = [], None, None, 0.0

    def update(self, fibers):
        self._parts.append(fibers)

    @property
    def seen(self):
        return sum(len(f) for f in self._parts) * math.prod(self._parts[0].shape[1:3])

    def prepare(self, whiten, rotation):
        """Whiten the maps (once; rotated maps are whitened as they are drawn)."""
        fibers = torch.cat(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = [fibers]
        self._whiten, self.rotation = whiten, rotation
        self.fibers = fibers if rotation else whiten(fibers)

    def init_vectors(self, count, generator):
        flat = self.fibers.reshape(-1, self.fibers.shape[-1])
        chosen = torch.randint(len(flat), (min(count, len(flat)),), generator=generator)
        return flat[chosen.to(flat.device)]

    def sample(self, size, generator):
        fibers = self.fibers
        n_images, height, width, dim = fibers.shape
        if self.rotation:
            chosen = torch.randint(n_images, (min(32, n_images),), generator=generator)
            fibers = self._whiten(rotate(fibers[chosen.to(fibers.device)], self.rotation, generator))
            n_images = len(fibers)
        image = torch.randint(n_images, (size,), generator=generator).to(fibers.device)
        position = torch.randint(height * width, (size,), generator=generator).to(fibers.device)
        return fibers.reshape(n_images, height * width, dim)[image, position], position

    def to_reservoir(self, capacity, generator):
        """A :class:`ReservoirSample` of these maps, for later updates."""
        reservoir = ReservoirSample(capacity, generator)
        for part in self._parts:
            reservoir.update(part)
        return reservoir


class ReservoirSample:
    """A uniform sample, without replacement, of a stream of vectors and their positions.

    Each vector gets a random key, and the ``capacity`` vectors with the
    smallest keys are kept (bottom-k sampling): a uniform sample of all the
    vectors seen, whatever the order and size of the batches, in bounded
    memory (``capacity x D`` floats).

    Parameters
    ----------
    capacity : int or None
        Vectors kept at most; None keeps them all.
    generator : torch.Generator
        Source of the keys (on the CPU).
    """

    def __init__(self, capacity, generator):
        self.capacity, self.generator = capacity, generator
        self.vectors = self.positions = self.keys = self._whiten_at = None
        self.seen = 0

    def update(self, fibers):
        """Offer a batch of maps ``(N, H, W, D)``."""
        n_images, height, width, dim = fibers.shape
        keys = torch.rand(n_images * height * width, generator=self.generator).to(fibers.device)
        positions = torch.arange(height * width, device=fibers.device).repeat(n_images)
        vectors = fibers.reshape(-1, dim)
        self.seen += len(keys)
        if self.keys is None:
            self.keys, self.positions, self.vectors = keys[:0], positions[:0], vectors[:0]
        room = len(keys) if self.capacity is None else max(0, self.capacity - len(self.keys))
        if room:
            # Until it is full, the reservoir takes the vectors as they come.
            self.keys = torch.cat([self.keys, keys[:room]])
            self.positions = torch.cat([self.positions, positions[:room]])
            self.vectors = torch.cat([self.vectors, vectors[:room]])
            keys, positions, vectors = keys[room:], positions[room:], vectors[room:]
        if len(keys):
            # Then a newcomer takes the slot of a kept vector with a larger
            # key, in place, so that memory stays that of the reservoir.
            kept = torch.cat([self.keys, keys]).topk(self.capacity, largest=False).indices
            entering = kept[kept >= len(self.keys)] - len(self.keys)
            is_kept = torch.zeros(len(self.keys), dtype=torch.bool, device=keys.device)
            is_kept[kept[kept < len(self.keys)]] = True
            evicted = torch.nonzero(~is_kept).flatten()
            self.keys[evicted] = keys[entering]
            self.positions[evicted] = positions[entering]
            self.vectors[evicted] = vectors[entering]

    def prepare(self, whiten_at, rotation):
        """Whiten the vectors drawn from now on, each at its own position."""
        if rotation:
            raise ValueError(
                "rotation needs the training maps, which a streaming or incremental fit does not "
                "keep: fit on Features in memory, or set rotation=0."
            )
        # Whitened as they are drawn, not once: a whitened copy would double
        # the reservoir's memory, and a training step's batch is whitened
        # in about the time of one flow step.
        self._whiten_at = whiten_at

    def init_vectors(self, count, generator):
        return self.sample(min(count, len(self.vectors)), generator)[0]

    def sample(self, size, generator):
        chosen = torch.randint(len(self.vectors), (size,), generator=generator).to(self.vectors.device)
        positions = self.positions[chosen]
        return self._whiten_at(self.vectors[chosen], positions), positions


def rotate(fibers, max_degrees, generator):
    """Rotate ``N x H x W x D`` feature maps by random angles about their centre."""
    angles = (torch.rand(len(fibers), generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    maps = fibers.permute(0, 3, 1, 2)
    grid = F.affine_grid(theta.to(maps), maps.shape, align_corners=False)
    rotated = F.grid_sample(maps, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return rotated.permute(0, 2, 3, 1)
