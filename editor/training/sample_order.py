"""Deterministic randomness and data order, the basis of exact resume: every random draw of optimizer
step `s`, micro-batch `m`, process `r` comes from a generator seeded with `step_seed(seed, s, m, r)`,
and the sample order (with each sample's flip and rotation angle) is a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np


def step_seed(seed: int, *parts: int) -> int:
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SampleStream:
    """The infinite, seeded sample order: position p -> (row index, flip, rotation angle) for epoch p // n."""

    def __init__(self, n: int, seed: int, hflip: bool, rotation_degrees: float = 0.0) -> None:
        self.n, self.seed, self.hflip, self.rotation = n, seed, hflip, float(rotation_degrees)
        self._epoch = -1
        self._perm = np.arange(n)
        self._flips = np.zeros(n, dtype=bool)
        self._angles = np.zeros(n)

    def item(self, position: int) -> tuple[int, bool, float]:
        epoch, within = divmod(position, self.n)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n)
            self._flips = (rng.random(self.n) < 0.5) if self.hflip else np.zeros(self.n, dtype=bool)
            # A stream of its own, so the order and flips are those of a run without rotation.
            angles = np.random.default_rng([self.seed, epoch, 2]).uniform(-1.0, 1.0, self.n) * self.rotation
            self._angles = angles if self.rotation > 0 else np.zeros(self.n)
            self._epoch = epoch
        return int(self._perm[within]), bool(self._flips[within]), float(self._angles[within])


class MicroBatches:
    """Batch sampler yielding the micro-batches of optimizer steps [start, end) for one process."""

    def __init__(self, stream: SampleStream, *, batch: int, accum: int, nproc: int, rank: int,
                 start: int, end: int) -> None:
        self.stream, self.batch, self.accum, self.nproc, self.rank = stream, batch, accum, nproc, rank
        self.start, self.end = start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.start, self.end):
            for micro in range(self.accum):
                g = (step * self.accum + micro) * self.nproc + self.rank
                yield [self.stream.item(g * self.batch + j) for j in range(self.batch)]
