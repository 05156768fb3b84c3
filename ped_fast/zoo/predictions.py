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

Both are scored in row blocks, never as one N x K float64 matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FORMS = ("compact", "exact")
# Bytes per image the compact form may take beyond the features.
COMPACT_BYTES = 1024
# Scorers that the compact form serves; any other scorer that reads
# predictions needs the exact form.
COMPACT_SCORERS = ("leep", "nce")
# Rows scored at once: a block of B x K float64 probabilities (B = 2^22 / K
# elements: 32 MiB), whatever N.
_BLOCK_ELEMENTS = 1 << 22


def index_dtype(num_sources):
    return np.uint16 if num_sources <= 1 << 16 else np.int32


def kept_classes(num_sources) -> int:
    """k of the compact form: as many (probability, class) pairs as fit in
    COMPACT_BYTES with the remaining probability and the argmax (4 bytes
    each), or every class of a smaller head."""
    per_class = 4 + np.dtype(index_dtype(num_sources)).itemsize
    return min(num_sources, (COMPACT_BYTES - 8) // per_class)


def compact_rows(logits: torch.Tensor) -> dict:
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
    arrays: dict

    @property
    def rows(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def serves(self, scorer) -> bool:
        return self.form == "exact" or scorer in COMPACT_SCORERS

    def argmax(self) -> np.ndarray:
        """Each image's most probable source class (the first on ties)."""
        if self.form == "compact":
            return np.asarray(self.arrays["argmax"], dtype=np.int64)
        logits = self.arrays["logits"]
        step = _block_rows(self.num_sources)
        return np.concatenate([np.asarray(logits[start:start + step]).argmax(axis=1)
                               for start in range(0, logits.shape[0], step)])

    def leep(self, labels) -> float:
        """LEEP (ped_fast.scorers.leep's definition) in row blocks."""
        index, num_classes = _label_index(labels, self.rows)
        if self.form == "exact":
            return _leep_dense(self.arrays["logits"], index, num_classes)
        return _leep_compact(self.arrays, self.num_sources, index, num_classes)


def _block_rows(num_sources):
    return max(1, _BLOCK_ELEMENTS // max(num_sources, 1))


def _label_index(labels, n):
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must be {n} class labels (one per prediction row), got shape {labels.shape}")
    classes, index = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"leep needs at least 2 classes, got {classes.size}")
    return torch.as_tensor(index, dtype=torch.int64), int(classes.size)


def _leep_dense(logits, index, num_classes):
    """Two passes over the N x K logits: the joint p(y, z), then each
    sample's expected empirical prediction of its own label."""
    n, sources = logits.shape
    step = _block_rows(sources)
    joint = torch.zeros(num_classes, sources, dtype=torch.float64)
    for start in range(0, n, step):
        theta = torch.softmax(torch.as_tensor(np.asarray(logits[start:start + step])).to(torch.float64), dim=1)
        joint.index_add_(0, index[start:start + step], theta)
    conditional = _conditional(joint / n)
    total = 0.0
    for start in range(0, n, step):
        theta = torch.softmax(torch.as_tensor(np.asarray(logits[start:start + step])).to(torch.float64), dim=1)
        total += float(torch.log((theta * conditional[index[start:start + step]]).sum(1)).sum())
    return total / n


def _conditional(joint):
    """p(y | z): a source class with zero probability contributes nothing
    (ped_fast.scorers.leep's rule)."""
    marginal = joint.sum(0)
    return torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(joint.dtype).tiny), 0.0)


def _leep_compact(arrays, num_sources, index, num_classes):
    """LEEP from the k kept probabilities of each image, its remaining
    probability spread evenly over the K - k other classes (exactly LEEP
    when k = K)."""
    top_p, top_i, rest = arrays["top_p"], arrays["top_i"], arrays["rest"]
    n, kept = top_p.shape
    others = num_sources - kept
    step = _block_rows(kept)

    def block(start):
        rows = slice(start, start + step)
        p = torch.as_tensor(np.asarray(top_p[rows])).to(torch.float64)
        z = torch.as_tensor(np.asarray(top_i[rows]).astype(np.int64))
        spread = torch.as_tensor(np.asarray(rest[rows])).to(torch.float64) / others if others else \
            torch.zeros(p.shape[0], dtype=torch.float64)
        return index[rows], p, z, spread

    # p(y, z) * n: the kept probabilities where they are, the spread
    # everywhere but there.
    kept_mass = torch.zeros(num_classes * num_sources, dtype=torch.float64)
    spread_by_class = torch.zeros(num_classes, dtype=torch.float64)
    for start in range(0, n, step):
        y, p, z, spread = block(start)
        cells = (y[:, None] * num_sources + z).flatten()
        kept_mass.index_add_(0, cells, (p - spread[:, None]).flatten())
        spread_by_class.index_add_(0, y, spread)
    joint = (kept_mass.view(num_classes, num_sources) + spread_by_class[:, None]) / n
    conditional = _conditional(joint)
    flat = conditional.flatten()
    row_sums = conditional.sum(1)
    total = 0.0
    for start in range(0, n, step):
        y, p, z, spread = block(start)
        picked = flat[(y[:, None] * num_sources + z)]
        expected = (p * picked).sum(1) + spread * (row_sums[y] - picked.sum(1))
        total += float(torch.log(expected).sum())
    return total / n


def compact_bytes(num_sources) -> int:
    """Bytes per image of the compact form."""
    kept = kept_classes(num_sources)
    return kept * (4 + np.dtype(index_dtype(num_sources)).itemsize) + 8


def check_form(form) -> str:
    if form not in FORMS:
        raise ValueError(f"predictions must be one of {', '.join(FORMS)}, got {form!r}")
    return form
