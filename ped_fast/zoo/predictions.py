"""The source model's predictions on the target images, for the scorers that
read them (LEEP, NCE), kept only when such a scorer is asked for, and never
for the reference set.

A classifier head has K outputs per image: 87 KB of float32 logits per
image for a 21k-class head (8.7 GB at 100,000 images), where LEEP and NCE
need far less. Two forms (docs/spec.md §2.6-2.7):

- "compact" (the default), at most 1 KiB per image: the k most probable
  source classes (probability float32, class uint16, or int32 past 65,536
  classes; k = 169 or 127, or K when the head is smaller), the probability
  of the others (float32) and the argmax (int32). NCE reads only the argmax:
  exact. LEEP is exact when k = K; otherwise the remaining probability is
  spread evenly over the K - k classes not kept (the one approximation,
  measured in docs/spec.md).
- "exact": the N x K float32 logits, as the head gives them; any scorer
  that reads predictions.

Both are scored in row blocks, never as one N x K float64 matrix: LEEP
holds one C x K float64 table (C target classes) beside its blocks, NCE
only the (target class, predicted class) pairs that occur.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..scorers.nce import LOG_OFFSET

FORMS = ("compact", "exact")
# Bytes per image the compact form may take beyond the features.
COMPACT_BYTES = 1024
# Scorers that the compact form serves; any other scorer that reads
# predictions needs the exact form.
COMPACT_SCORERS = ("leep", "nce")
# Rows scored at once: B = 2^20 / K rows (B x k for the compact form), so
# that each float64 or int64 block is 8 MiB whatever N. Beside a few such
# blocks, LEEP's one C x K float64 table is all that grows with the problem
# (docs/benchmarks.md §10).
_BLOCK_ELEMENTS = 1 << 20
# -p log p of a p(y | z) = 0 cell under NCE's 1e-20 offset (ped_fast.scorers.nce).
_EMPTY_CELL_ENTROPY = -LOG_OFFSET * math.log(LOG_OFFSET)


def index_dtype(num_sources: int) -> type[np.uint16] | type[np.int32]:
    return np.uint16 if num_sources <= 1 << 16 else np.int32


def kept_classes(num_sources: int) -> int:
    """k of the compact form: as many (probability, class) pairs as fit in
    COMPACT_BYTES with the remaining probability and the argmax (4 bytes
    each), or every class of a smaller head."""
    per_class = 4 + np.dtype(index_dtype(num_sources)).itemsize
    return min(num_sources, (COMPACT_BYTES - 8) // per_class)


def compact_rows(logits: torch.Tensor) -> dict[str, npt.NDArray[Any]]:
    """The compact form of a B x K block of logits: {"top_p": B x k float32,
    "top_i": B x k class indices, "rest": B float32, "argmax": B int32}
    (numpy, on the CPU). Probabilities are a float64 softmax, as LEEP's."""
    num_sources = logits.shape[1]
    probabilities = torch.softmax(logits.to(torch.float64), dim=1)
    values, classes = probabilities.topk(kept_classes(num_sources), dim=1)
    rest = (probabilities.sum(1) - values.sum(1)).clamp_min(0.0)
    return {"top_p": values.float().cpu().numpy(), "top_i": classes.cpu().numpy().astype(index_dtype(num_sources)),
            "rest": rest.float().cpu().numpy(), "argmax": logits.argmax(dim=1).to(torch.int32).cpu().numpy()}


@dataclass
class Predictions:
    """One model's predictions on the N target images, in one of FORMS.

    num_sources: K, the head's classes. arrays: the compact form's top_p,
    top_i, rest and argmax, or {"logits": N x K} (numpy; memory-mapped from
    the cache or a --features folder)."""
    form: str
    num_sources: int
    arrays: dict[str, npt.NDArray[Any]]

    @property
    def rows(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def serves(self, scorer: str) -> bool:
        return self.form == "exact" or scorer in COMPACT_SCORERS

    def argmax(self) -> npt.NDArray[np.int64]:
        """Each image's most probable source class (the first on ties)."""
        if self.form == "compact":
            return np.asarray(self.arrays["argmax"], dtype=np.int64)
        logits = self.arrays["logits"]
        step = _block_rows(self.num_sources)
        return np.concatenate([np.asarray(logits[start:start + step]).argmax(axis=1)
                               for start in range(0, logits.shape[0], step)])

    def leep(self, labels: npt.ArrayLike) -> float:
        """LEEP (ped_fast.scorers.leep's definition) in row blocks."""
        index, num_classes = _label_index(labels, self.rows, "leep")
        if self.form == "exact":
            return _leep_dense(self.arrays["logits"], index, num_classes)
        return _leep_compact(self.arrays, self.num_sources, index, num_classes)

    def nce(self, labels: npt.ArrayLike) -> float:
        """NCE (ped_fast.scorers.nce's definition, its 1e-20 offset
        included) from each image's argmax, exact in both forms. Only the
        (target class, predicted class) pairs that occur are counted (at
        most N), not the scorer's C x (predicted classes) table: memory
        O(N)."""
        index, num_classes = _label_index(labels, self.rows, "nce")
        return _nce(torch.as_tensor(self.argmax()), index, num_classes)


def _block_rows(num_sources: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(num_sources, 1))


def _label_index(labels: npt.ArrayLike, n: int, scorer: str) -> tuple[torch.Tensor, int]:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must be {n} class labels (one per prediction row), got shape {labels.shape}")
    classes, index = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"{scorer} needs at least 2 classes, got {classes.size}")
    return torch.as_tensor(index.reshape(-1), dtype=torch.int64), int(classes.size)


def _float64(block: npt.ArrayLike) -> torch.Tensor:
    """A float64 copy of rows read from a (possibly read-only, memory-mapped)
    array: the copy is the block's own, free to be changed in place."""
    return torch.from_numpy(np.array(block, dtype=np.float64))


def _leep_dense(logits: npt.NDArray[Any], index: torch.Tensor, num_classes: int) -> float:
    """Two passes over the N x K logits: the joint p(y, z), then each
    sample's expected empirical prediction of its own label. Beside the
    C x K table, a block's probabilities and its rows of p(y | z)."""
    n: int  # numpy types shape entries as Any
    n, sources = logits.shape
    step = _block_rows(sources)
    joint = torch.zeros(num_classes, sources, dtype=torch.float64)
    for start in range(0, n, step):
        # index_put_, not index_add_: the same sums to the bit, but
        # index_add_ along rows syncs its threads once per call, which cost
        # 20x more than the additions on this shared 2-core machine.
        joint.index_put_((index[start:start + step],), torch.softmax(_float64(logits[start:start + step]), dim=1),
                         accumulate=True)
    conditional = _conditional_(joint, n)
    total = 0.0
    for start in range(0, n, step):
        rows = slice(start, start + step)
        theta = torch.softmax(_float64(logits[rows]), dim=1)
        total += float(torch.log(theta.mul_(conditional[index[rows]]).sum(1)).sum())
    return total / n


def _conditional_(joint: torch.Tensor, n: int) -> torch.Tensor:
    """p(y | z), computed in place of the C x K sums of probabilities per
    target class (N p(y, z)), which it returns: one C x K table, never a
    second. A source class with zero probability contributes nothing
    (ped_fast.scorers.leep's rule), by the scorer's own operations."""
    joint.div_(n)
    marginal = joint.sum(0)
    joint.div_(marginal.clamp_min(torch.finfo(joint.dtype).tiny))
    return joint.masked_fill_(~(marginal > 0), 0.0)


def _leep_compact(arrays: dict[str, npt.NDArray[Any]], num_sources: int, index: torch.Tensor,
                  num_classes: int) -> float:
    """LEEP from the k kept probabilities of each image, its remaining
    probability spread evenly over the K - k other classes (exactly LEEP
    when k = K)."""
    top_p, top_i, rest = arrays["top_p"], arrays["top_i"], arrays["rest"]
    n: int  # numpy types shape entries as Any
    n, kept = top_p.shape
    others = num_sources - kept
    step = _block_rows(kept)

    def block(start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, kept probabilities, their flat cells y K + z in the
        C x K table, the spread probability of each other class)."""
        rows = slice(start, start + step)
        y = index[rows]
        cells = torch.from_numpy(np.array(top_i[rows], dtype=np.int64)).add_(y[:, None] * num_sources)
        spread = _float64(rest[rows]).div_(others) if others else torch.zeros(y.shape[0], dtype=torch.float64)
        return y, _float64(top_p[rows]), cells, spread

    # N p(y, z): the kept probabilities where they are, the spread
    # everywhere but there.
    joint = torch.zeros(num_classes * num_sources, dtype=torch.float64)
    spread_by_class = torch.zeros(num_classes, dtype=torch.float64)
    for start in range(0, n, step):
        y, p, cells, spread = block(start)
        joint.index_add_(0, cells.flatten(), p.sub_(spread[:, None]).flatten())
        spread_by_class.index_add_(0, y, spread)
    conditional = _conditional_(joint.view(num_classes, num_sources).add_(spread_by_class[:, None]), n)
    row_sums = conditional.sum(1)
    total = 0.0
    for start in range(0, n, step):
        y, p, cells, spread = block(start)
        picked = conditional.view(-1)[cells]
        others_sum = row_sums[y] - picked.sum(1)
        expected = p.mul_(picked).sum(1).add_(spread.mul_(others_sum))
        total += float(torch.log(expected).sum())
    return total / n


def _nce(source: torch.Tensor, index: torch.Tensor, num_classes: int) -> float:
    """-H(y | z) over the pairs (y, z) that occur; each predicted class's
    C - (its pairs) empty cells add the offset's entropy in closed form."""
    n = source.shape[0]
    _, position = torch.unique(source, return_inverse=True)
    pairs, counts = torch.unique(position * num_classes + index, return_counts=True)
    predicted = pairs // num_classes
    occurring = int(position.max()) + 1
    joint = counts.to(torch.float64) / n  # p(y, z) of each pair
    marginal = torch.zeros(occurring, dtype=torch.float64).index_add_(0, predicted, joint)
    conditional = joint / marginal[predicted] + LOG_OFFSET
    entropy = torch.zeros(occurring, dtype=torch.float64)
    entropy.index_add_(0, predicted, -conditional * torch.log(conditional))
    empty = num_classes - torch.bincount(predicted, minlength=occurring)
    entropy += empty.to(torch.float64) * _EMPTY_CELL_ENTROPY
    return -float((entropy * marginal).sum())


def compact_bytes(num_sources: int) -> int:
    """Bytes per image of the compact form."""
    kept = kept_classes(num_sources)
    return kept * (4 + np.dtype(index_dtype(num_sources)).itemsize) + 8


def check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"predictions must be one of {', '.join(FORMS)}, got {form!r}")
    return form
