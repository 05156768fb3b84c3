"""PARC, pairwise annotation representation comparison (Bolya et al.,
"Scalable diverse model selection for accessible transfer learning",
NeurIPS 2021), as dbolya/parc computes it (methods.py: feature_reduce and
PARC); docs/spec.md §2.11.

The published code reduces the features to 32 dimensions with
scikit-learn's randomized PCA (random_state=1919, one power iteration),
standardises them, and returns 100 x Spearman's correlation between the
upper triangles of two N x N dissimilarity matrices: 1 - the Pearson
correlation between every two samples' reduced features, and the same for
their one-hot labels. It holds both N x N matrices, their M = N(N-1)/2
upper triangles and two argsorts of those (at SUN397 shape, M = 197 million
values, tens of GB).

Here:
- The randomized PCA is scikit-learn's algorithm with the same random
  draws (numpy's RandomState(seed).normal, drawn on the CPU whatever the
  device), so the reduced features agree to rounding.
- The label dissimilarity takes two values, 0 for a pair of one class and
  1 + 1/(C-1) otherwise; Spearman's correlation with a two-valued variable
  needs only M, the number of same-class pairs, the sum of the feature
  dissimilarities' ranks over those pairs, and the tie counts of the
  feature dissimilarities (docs/spec.md §2.11). Those are exact integers,
  and the result is the published formula without rounding in between.
- The feature dissimilarities are computed in blocks of sample pairs and
  never held at once: each pass recomputes them and keeps one range of
  values (about 2^27 of them, 1 GB in float64; the ranges are placed by
  the quantiles of a random sample of pairs), which it sorts to rank. At
  SUN397 shape that is two passes.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .._validate import ArrayLike, all_finite, check_count, raise_non_finite
from ._input import DtypeLike, prepare
from ._linalg import matmul, thin_qr_basis, thin_svd

COMPONENTS = 32
SEED = 1919
OVERSAMPLES = 10  # scikit-learn's n_oversamples
POWER_ITERATIONS = 1  # the published iterated_power
_BLOCK = {"cpu": 2048}
_DEVICE_BLOCK = 8192
_PARTITION_VALUES = 1 << 27  # values held at once: 1 GB in float64
_SAMPLE_PAIRS = 1 << 20
_SLACK = 1 << 16
_SEARCH_CHUNK = 1 << 22


def parc(features: ArrayLike, labels: ArrayLike, *, components: int = COMPONENTS, seed: int = SEED,
         dtype: DtypeLike = torch.float64, backend: str = "auto") -> float:
    """PARC of `features` (N x D) for `labels` (N): 100 x Spearman's rank
    correlation between the samples' dissimilarities in the reduced feature
    space and in label space, a float in [-100, 100]; higher is better.

    components: PCA dimensions (the published 32); **ped_fast**: at most
    min(N, D), where the published code raises for D < 32. seed: the
    randomized PCA's random_state (the published 1919): the same seed gives
    the same score on every device. dtype: torch.float64 (default) or
    torch.float32. backend: checked as ped() checks it, so that every
    scorer takes the same options (PARC runs no backend operation). Labels
    may be any integers; at least two classes, one of them with two
    samples. Raises ValueError where the published code returns NaN:
    constant features, a sample whose reduced features are all equal, or
    fewer than two reduced dimensions (D = 1).
    """
    components = check_count(components, "components")
    seed = check_count(seed, "seed")
    prep = prepare(features, labels, dtype, backend, "parc")
    if not all_finite(prep.x):
        raise_non_finite(prep.x, "features")
    n, dim = prep.x.shape
    kept = min(components, n, dim)
    if kept < 2:
        raise ValueError(f"parc correlates samples over their reduced features and needs at least 2 of them, but "
                         f"min(components, N, D) = min({components}, {n}, {dim}) = {kept}")
    reduced = randomized_pca(prep.x.to(prep.dtype), kept, seed)
    return 100.0 * _spearman_with_labels(_unit_rows(_standardize(reduced)), prep.index)


def randomized_pca(x: torch.Tensor, components: int, seed: int) -> torch.Tensor:
    """scikit-learn's PCA(n_components=components, svd_solver="randomized",
    random_state=seed, iterated_power=1).fit_transform(x): the centred x's
    projections on its approximate principal axes (N x components), each
    axis's sign making its largest-magnitude entry positive. Directions
    whose singular value is at or below s_max * max(N, D) * eps come out as
    zero (**ped_fast**: for features of rank below `components`, the
    published code standardises that rounding noise to unit variance)."""
    n, dim = x.shape
    centred = x - x.mean(0)
    transpose = n < dim  # scikit-learn then works on the N x D matrix's transpose
    a = centred.T if transpose else centred
    draws = np.random.RandomState(seed).normal(size=(a.shape[1], components + OVERSAMPLES))
    q = torch.from_numpy(draws).to(device=x.device, dtype=x.dtype)
    for _ in range(POWER_ITERATIONS):
        q = matmul(a.T, matmul(a, q))
    q = thin_qr_basis(matmul(a, q))
    u_hat, s, vt = thin_svd(matmul(q.T, a))
    u = matmul(q, u_hat)
    if transpose:
        axes, scores = u[:, :components].T, vt[:components].T * s[:components]
    else:
        axes, scores = vt[:components], u[:, :components] * s[:components]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True))).squeeze(1)
    scores = scores * signs
    noise = s[:components] <= s[0] * max(n, dim) * torch.finfo(s.dtype).eps
    return scores.masked_fill(noise.unsqueeze(0), 0.0)


def _standardize(z: torch.Tensor) -> torch.Tensor:
    """StandardScaler: zero mean and unit population variance per column;
    a constant column is only centred (scale 1)."""
    z = z - z.mean(0)
    scale = z.square().mean(0).sqrt()
    return z / torch.where(scale > 0, scale, torch.ones_like(scale))


def _unit_rows(z: torch.Tensor) -> torch.Tensor:
    """Each row centred on its own mean and scaled to unit norm: then
    u_i . u_j is the Pearson correlation of samples i and j."""
    z = z - z.mean(1, keepdim=True)
    norm: torch.Tensor = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    flat = norm.squeeze(1) == 0
    if bool(flat.any()):
        first = int(torch.nonzero(flat)[0, 0])
        raise ValueError(f"parc: {int(flat.sum())} samples (the first is row {first}) have reduced features that are "
                         f"all equal, so their correlation with other samples is undefined (constant features do "
                         f"this); the published code returns NaN")
    return z / norm


def _spearman_with_labels(u: torch.Tensor, classes: torch.Tensor) -> float:
    """Spearman's correlation between the dissimilarities 1 - u_i.u_j of the
    pairs i < j of unit rows u (N x k) and the two-valued label
    dissimilarity [classes_i != classes_j]."""
    n = u.shape[0]
    pairs = n * (n - 1) // 2
    counts = torch.bincount(classes)
    same_pairs = int((counts * (counts - 1) // 2).sum())
    if same_pairs == 0:
        raise ValueError("parc needs a class with at least two samples: with every class a single sample, every pair "
                         "has the same label dissimilarity and its ranks carry nothing (the published code returns "
                         "NaN)")
    pairs_of = _PairValues(u, classes)
    ranks = _RankSums()
    for low, high, sizes in _value_ranges(pairs_of, pairs, same_pairs):
        # No name holds a range's values past add(): the next range's
        # buffers take their memory.
        ranks.add(*(_sorted(values) for values in pairs_of.collect(low, high, sizes)))
    other_pairs = pairs - same_pairs
    # With b = [different classes] (an affine function of the label ranks)
    # and r the average ranks of the feature dissimilarities:
    # sum (r - mean r)(b - mean b) = sum_{b=1} r - (M + 1)/2 m1, where
    # sum_{b=1} r = M(M+1)/2 - sum_{b=0} r; sum (r - mean r)^2 =
    # (M^3 - M - T)/12 with T = sum over tie groups of t^3 - t; and
    # sum (b - mean b)^2 = m0 m1 / M. Twice the rank sums are integers.
    other_rank_sum_x2 = pairs * (pairs + 1) - ranks.same_x2
    covariance = (other_rank_sum_x2 - (pairs + 1) * other_pairs) / 2
    rank_spread = (float(pairs**3 - pairs) - ranks.ties) / 12.0
    if not rank_spread > 0:
        raise ValueError("parc: every pair of samples has the same feature dissimilarity, so its ranks carry nothing")
    return float(covariance) / float(np.sqrt(rank_spread * same_pairs * other_pairs / pairs))


class _PairValues:
    """The dissimilarities 1 - clip(u_i.u_j, -1, 1) of the pairs i < j,
    computed block by block; every pass recomputes them with the same
    operations on the same blocks, hence the same bits. The samples are
    taken in class order, so that each block's same-class pairs are a few
    rectangles: once read, they and the pairs i >= j are overwritten with
    -1, which no dissimilarity is, and the entries >= 0 left are the block's
    different-class pairs."""

    def __init__(self, u: torch.Tensor, classes: torch.Tensor) -> None:
        order = torch.argsort(classes, stable=True)
        self.u, self.classes = u[order], classes[order]
        self.block = _BLOCK.get(u.device.type, _DEVICE_BLOCK)
        # One block's values, reused by every block (a fresh 32 MB
        # allocation per block costs more than filling it).
        self.scratch = torch.empty(min(self.block, u.shape[0]) ** 2, dtype=u.dtype, device=u.device)
        ends = torch.cumsum(torch.bincount(classes), 0).tolist()
        self.spans = list(zip([0] + ends[:-1], ends))  # [start, end) of each class in the sorted order

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(values, same) per block: values a rows x cols matrix whose
        entries >= 0 are the block's different-class pairs i < j, and same
        its same-class pairs i < j (flat)."""
        n = self.u.shape[0]
        for a in range(0, n, self.block):
            rows = (a, min(a + self.block, n))
            for c in range(a, n, self.block):
                cols = (c, min(c + self.block, n))
                # 1 - u_i.u_j in the product itself (one rounding), then
                # clipped to [0, 2]: 1 - clip(corr, -1, 1), as published.
                values = self.scratch[: (rows[1] - rows[0]) * (cols[1] - cols[0])].view(rows[1] - rows[0], -1)
                values.fill_(1.0)
                matmul(self.u[rows[0] : rows[1]], self.u[cols[0] : cols[1]].T, alpha=-1.0, add=values)
                values.clamp_(0.0, 2.0)
                if c == a:
                    values.masked_fill_(torch.ones_like(values, dtype=torch.bool).tril_(), -1.0)
                same: list[torch.Tensor] = []
                for start, end in self.spans:
                    r0, r1 = max(start, rows[0]) - rows[0], min(end, rows[1]) - rows[0]
                    c0, c1 = max(start, cols[0]) - cols[0], min(end, cols[1]) - cols[0]
                    if r0 < r1 and c0 < c1:
                        patch = values[r0:r1, c0:c1]
                        same.append(patch[patch >= 0])
                        patch.fill_(-1.0)
                # The caller reads the block before the next one overwrites it.
                yield values, torch.cat(same) if same else values.new_empty(0)

    def collect(self, low: float, high: float, sizes: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """The dissimilarities in [low, high) of the same-class and of the
        different-class pairs (two flat tensors), in buffers of the expected
        `sizes` that grow if need be."""
        same_buffer, other_buffer = (_Buffer(size, self.u) for size in sizes)
        for values, same in self.blocks():
            same_buffer.append(_select(same, low, high))
            other_buffer.append(_select(values, low, high))
        return same_buffer.values(), other_buffer.values()

    def sample(self, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(same, values): `count` dissimilarities of pairs i < j drawn at
        random (seeded; for estimating quantiles only) and whether each
        pair is of one class."""
        n = self.u.shape[0]
        generator = torch.Generator().manual_seed(seed)
        i = torch.randint(n, (count,), generator=generator).to(self.u.device)
        j = torch.randint(n - 1, (count,), generator=generator).to(self.u.device)
        j += (j >= i).to(j.dtype)  # j != i
        values = (1.0 - (self.u[i] * self.u[j]).sum(1)).clamp_(0.0, 2.0)
        return self.classes[i] == self.classes[j], values


def _select(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The entries of `values` in [low, high), flat (on the CPU by numpy's
    index selection, about three times torch's boolean indexing there)."""
    if values.device.type != "cpu":
        flat = values.reshape(-1)
        return flat[(flat >= low) & (flat < high)]
    array = values.numpy().reshape(-1)
    keep = array >= low if high == np.inf else (array >= low) & (array < high)
    return torch.from_numpy(array[np.flatnonzero(keep)])


class _Buffer:
    """A flat tensor filled by appends, with room for `capacity` values
    (grown by half when an append does not fit)."""

    def __init__(self, capacity: float, like: torch.Tensor) -> None:
        self.data = torch.empty(max(int(capacity), 1), dtype=like.dtype, device=like.device)
        self.size = 0

    def append(self, values: torch.Tensor) -> None:
        end = self.size + values.numel()
        if end > self.data.numel():
            grown = torch.empty(max(end, self.data.numel() * 3 // 2), dtype=self.data.dtype, device=self.data.device)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end

    def values(self) -> torch.Tensor:
        return self.data[: self.size]


def _value_ranges(pairs_of: _PairValues, pairs: int,
                  same_pairs: int) -> list[tuple[float, float, tuple[float, float]]]:
    """Value ranges [low, high) of the dissimilarities in increasing order,
    covering [0, inf), with the expected (same-class, different-class)
    counts of each: about _PARTITION_VALUES values per range, placed by the
    quantiles of a random sample of _SAMPLE_PAIRS pairs. The ranges decide
    only how the values are split between passes, never the result."""
    if pairs <= _PARTITION_VALUES:
        return [(0.0, np.inf, (same_pairs, pairs - same_pairs))]
    same, values = pairs_of.sample(_SAMPLE_PAIRS)
    ordered = torch.sort(values).values
    parts = -(-pairs // _PARTITION_VALUES)
    cuts = ordered[torch.arange(1, parts, device=ordered.device) * ordered.numel() // parts].tolist()
    bounds = [0.0] + sorted(set(cuts) - {0.0}) + [np.inf]
    ranges: list[tuple[float, float, tuple[float, float]]] = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        inside = (values >= low) & (values < high)
        # Expected counts, with a margin for the sampling error (~0.1% of a
        # range's count at these sizes).
        share_same = float((inside & same).sum()) / values.numel()
        share_other = float((inside & ~same).sum()) / values.numel()
        ranges.append((low, high, (1.02 * share_same * pairs + _SLACK, 1.02 * share_other * pairs + _SLACK)))
    return ranges


def _sorted(values: torch.Tensor) -> torch.Tensor:
    """values sorted ascending (in place on the CPU: numpy's sort is about
    twice torch's there)."""
    if values.device.type == "cpu":
        values.numpy().sort()
        return values
    return torch.sort(values).values


def _tie_runs(ordered: torch.Tensor) -> torch.Tensor:
    """The lengths (int64) of the runs of two or more equal values of a
    sorted tensor: one boolean mask of its adjacent equalities, and arrays
    only as long as the ties."""
    if ordered.numel() < 2:
        return torch.zeros(0, dtype=torch.int64, device=ordered.device)
    positions = torch.nonzero(ordered[1:] == ordered[:-1]).flatten()  # ordered[p + 1] == ordered[p]
    if positions.numel() == 0:
        return positions
    first = torch.ones_like(positions, dtype=torch.bool)
    first[1:] = positions[1:] != positions[:-1] + 1
    return torch.bincount(torch.cumsum(first, 0) - 1) + 1


class _RankSums:
    """Accumulates, over value ranges taken in increasing order, twice the
    sum of the average ranks of the same-class values (an integer) and the
    tie term T = sum over groups of equal values of t^3 - t, with memory
    beyond the range's values of one boolean per value and per-chunk
    arrays."""

    def __init__(self) -> None:
        self.below = 0  # values in the ranges already added
        self.same_x2 = 0
        self.ties = 0.0

    def add(self, same: torch.Tensor, other: torch.Tensor) -> None:
        """same, other: the sorted same-class and different-class values of
        the next range (m and m_o of them).

        A same-class value s at position p of `same`, in a run of c_s equal
        same-class values starting at q, with `less` different-class values
        below it and `equal` equal to it, has twice its average rank
        2 (below + q + less) + c_s + equal + 1. Summed over `same`:
        sum q = m(m - 1)/2 - sum over runs of c_s(c_s - 1)/2 and
        sum c_s = m + sum over runs of (c_s^2 - c_s), runs of length 1
        contributing nothing. A group of t = c_s + c_o equal values adds
        t^3 - t = (c_s^3 - c_s) + (c_o^3 - c_o) + 3 c_s c_o (c_s + c_o) to T;
        the last term is 3 c_o (c_s + c_o) per same-class value."""
        m = same.numel()
        same_runs = _tie_runs(same).to(torch.float64)
        other_runs = _tie_runs(other).to(torch.float64)
        less_total, equal_total, cross = 0, 0, 0.0
        for start in range(0, m, _SEARCH_CHUNK):
            values = same[start : start + _SEARCH_CHUNK]
            less = torch.searchsorted(other, values)
            equal = torch.searchsorted(other, values, right=True) - less
            less_total += int(less.sum())
            equal_total += int(equal.sum())
            tied = equal > 0
            if bool(tied.any()):
                values, c_o = values[tied], equal[tied].to(torch.float64)
                c_s = (torch.searchsorted(same, values, right=True) - torch.searchsorted(same, values)).to(torch.float64)
                cross += float((3.0 * c_o * (c_s + c_o)).sum())
        same_pairs_below = m * (m - 1) // 2 - int((same_runs * (same_runs - 1)).sum()) // 2
        same_copies = m + int((same_runs * same_runs - same_runs).sum())
        self.same_x2 += 2 * (self.below * m + same_pairs_below + less_total) + same_copies + equal_total + m
        self.ties += float((same_runs**3 - same_runs).sum() + (other_runs**3 - other_runs).sum()) + cross
        self.below += m + other.numel()
