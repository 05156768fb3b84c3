"""Leave-one-out k-nearest-neighbour accuracy, as transformer-ranker
computes it (transformer_ranker/estimators/nearestneighbors.py, KNN):
Euclidean distances, each sample's k nearest other samples, a majority
vote; docs/spec.md §2.12.

The published code computes the distances of 1024-row batches to all N
samples (torch.cdist), N^2 D multiply-adds. Distances are symmetric, so
here each pair of row blocks is computed once, as one matrix product, and
offered to the rows of both blocks: half the work, and never more than one
block x block matrix at a time (2048 x 2048 on the CPU), whatever N.

Ties are resolved in a fixed order, where the published topk and mode leave
them to the implementation: among equally distant samples the smaller index
is the nearer, and a vote tied between classes goes to the smallest label
(torch.mode's choice on the CPU).
"""
from __future__ import annotations

import torch

from .._validate import ArrayLike, all_finite, check_count, raise_non_finite
from ._input import DtypeLike, prepare
from ._linalg import matmul

_BLOCK = {"cpu": 2048}
_DEVICE_BLOCK = 8192
_VOTE_CHUNK_ELEMENTS = 1 << 22


def knn(features: ArrayLike, labels: ArrayLike, *, k: int = 3, dtype: DtypeLike = torch.float64,
        backend: str = "auto") -> float:
    """Leave-one-out k-NN accuracy of `features` (N x D) for `labels` (N):
    the fraction of samples whose k nearest other samples (Euclidean
    distance) vote for their own class, a float in [0, 1]; higher is
    better.

    k: neighbours per vote (the published default 3), 1 <= k <= N - 1.
    dtype: torch.float64 (default) or torch.float32 (distances in float32).
    backend: checked as ped() checks it, so that every scorer takes the
    same options (k-NN runs no backend operation). Labels may be any
    integers; at least two classes. **ped_fast**: with two classes the
    published code reports the F1 score of the class labelled 1 instead of
    the accuracy; here it is the accuracy for any number of classes.
    """
    k = check_count(k, "k")
    prep = prepare(features, labels, dtype, backend, "knn")
    if not all_finite(prep.x):
        raise_non_finite(prep.x, "features")
    n = prep.x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and N - 1 = {n - 1} (each sample's neighbours are the other samples), "
                         f"got {k}")
    neighbours = nearest_neighbours(prep.x.to(prep.dtype), k)
    return float((_vote(prep.index[neighbours]) == prep.index).to(torch.float64).mean())


def nearest_neighbours(x: torch.Tensor, k: int, block: int | None = None) -> torch.Tensor:
    """The k nearest other rows of x (N x D) for every row (N x k int64,
    nearest first; ties in index order), by squared Euclidean distance
    ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, one block x block product at a time
    (block rows: 2048 on the CPU, 8192 on a GPU, unless given)."""
    n = x.shape[0]
    block = block or _BLOCK.get(x.device.type, _DEVICE_BLOCK)
    x = x.contiguous()
    # Squared norms block by block: x * x at once would be another N x D.
    sq = torch.cat([(x[a : a + block] * x[a : a + block]).sum(1) for a in range(0, n, block)])
    best_dist = torch.full((n, k), torch.inf, dtype=x.dtype, device=x.device)
    best_index = torch.full((n, k), n, dtype=torch.int64, device=x.device)  # n: after every real index
    for a in range(0, n, block):
        rows = slice(a, min(a + block, n))
        for c in range(a, n, block):
            cols = slice(c, min(c + block, n))
            dist = matmul(x[rows], x[cols].T).mul_(-2.0)
            dist += sq[rows].unsqueeze(1)
            dist += sq[cols].unsqueeze(0)
            if c == a:
                dist.fill_diagonal_(torch.inf)  # a sample is not its own neighbour
            _offer(best_dist, best_index, rows, dist, c)
            if c != a:
                _offer(best_dist, best_index, cols, dist.T, a)
    return best_index


def _offer(best_dist: torch.Tensor, best_index: torch.Tensor, rows: slice, dist: torch.Tensor, offset: int) -> None:
    """Merge the k nearest of `dist` (rows x block, columns from index
    `offset`) into the current best of `rows`, keeping the order (distance,
    index)."""
    k = best_dist.shape[1]
    take = min(k, dist.shape[1])
    if take < dist.shape[1]:
        # One more than needed: when the (take+1)-th distance equals the
        # take-th, a tie crosses the cut and topk's pick among the tied
        # columns is arbitrary; those rows are sorted stably instead, which
        # keeps the smaller indices.
        values, columns = torch.topk(dist, take + 1, dim=1, largest=False, sorted=True)
        crossing = values[:, take] == values[:, take - 1]
        values, columns = values[:, :take], columns[:, :take]
        if bool(crossing.any()):
            tied = torch.nonzero(crossing).flatten()
            exact_values, exact_columns = torch.sort(dist[tied], dim=1, stable=True)
            values[tied], columns[tied] = exact_values[:, :take], exact_columns[:, :take]
    else:
        values, columns = dist, torch.arange(dist.shape[1], device=dist.device).expand_as(dist)
    merged_dist = torch.cat([best_dist[rows], values], dim=1)
    merged_index = torch.cat([best_index[rows], columns + offset], dim=1)
    by_index = torch.argsort(merged_index, dim=1, stable=True)
    merged_dist, merged_index = merged_dist.gather(1, by_index), merged_index.gather(1, by_index)
    by_distance = torch.argsort(merged_dist, dim=1, stable=True)[:, :k]
    best_dist[rows] = merged_dist.gather(1, by_distance)
    best_index[rows] = merged_index.gather(1, by_distance)


def _vote(neighbour_classes: torch.Tensor) -> torch.Tensor:
    """The majority class of each row of `neighbour_classes` (N x k class
    positions); a tie goes to the smallest. In row chunks (N k^2 compares)."""
    n, k = neighbour_classes.shape
    ordered = torch.sort(neighbour_classes, dim=1).values
    out = torch.empty(n, dtype=torch.int64, device=ordered.device)
    step = max(1, _VOTE_CHUNK_ELEMENTS // (k * k))
    for start in range(0, n, step):
        chunk = ordered[start : start + step]
        votes = (chunk.unsqueeze(2) == chunk.unsqueeze(1)).sum(2)  # occurrences of each entry in its row
        # argmax returns the first maximum: the smallest of the tied classes.
        out[start : start + step] = chunk.gather(1, votes.argmax(1, keepdim=True)).squeeze(1)
    return out
