"""NCE, the negative conditional entropy of the target labels given the
source model's predicted labels (Tran et al., "Transferability and hardness
of supervised classification tasks", ICCV 2019), as tllib computes it
(tllib/ranking/nce.py); docs/spec.md §2.7.

NCE reads the source model's predictions, not features: PED does not apply
to it. The joint distribution is counted over the source classes that some
sample is predicted as (at most N of them), not all K.
"""
from __future__ import annotations

import torch

from .. import _backends
from .._validate import ArrayLike, all_finite, labels_tensor, raise_non_finite, to_tensor
from ._input import DtypeLike, check_classes, compute_dtype

# tllib adds 1e-20 to every p(y | z) of a source class that occurs before
# taking its log: a zero entry then adds -1e-20 log(1e-20) ~ 4.6e-19.
LOG_OFFSET = 1e-20


def nce(probabilities: ArrayLike, labels: ArrayLike, *, logits: bool = False, dtype: DtypeLike = torch.float64,
        backend: str = "auto") -> float:
    """NCE of the source model's predictions for the target `labels` (N):
    minus the conditional entropy H(y | z) of the target label y given the
    source model's predicted class z, a float <= 0; higher is better.

    probabilities: the source model's probabilities or logits (N x K; z is
    each row's argmax, the first on ties: the same for both, so `logits`
    is accepted for symmetry with leep and changes nothing), or its
    predicted labels z (N integers). dtype: torch.float64 (default) or
    torch.float32. backend: checked as ped() checks it (NCE runs no backend
    operation). Labels may be any integers; at least two classes.
    """
    dtype = compute_dtype(dtype)
    source = _source_labels(probabilities, logits)
    index, classes, _ = labels_tensor(labels, source.shape[0], source.device, "probabilities")
    check_classes(classes, "nce")
    _backends.resolve(backend, source.device)
    n = source.shape[0]
    num_classes = classes.shape[0]
    predicted, position = torch.unique(source, sorted=True, return_inverse=True)
    counts = torch.bincount(index * predicted.shape[0] + position, minlength=num_classes * predicted.shape[0])
    joint = counts.view(num_classes, -1).to(dtype) / n  # p(y, z) over the predicted z
    marginal = joint.sum(0)  # p(z) > 0 for every predicted z
    conditional = joint / marginal + LOG_OFFSET
    entropy = -(conditional * torch.log(conditional)).sum(0)  # H(y | z) per z
    return -float((entropy * marginal).sum())


def _source_labels(probabilities: ArrayLike, logits: bool) -> torch.Tensor:
    """The source model's predicted class of each sample (N int64)."""
    if not isinstance(logits, bool):
        raise TypeError(f"logits must be True or False, got {logits!r}")
    values, _ = to_tensor(probabilities, "probabilities")
    if values.dim() == 1:
        if logits:
            raise ValueError("logits=True needs the source model's N x K logits, but probabilities is 1-D (predicted "
                             "labels)")
        if values.dtype.is_floating_point or values.dtype.is_complex:
            raise TypeError(f"a 1-D probabilities is read as the source model's predicted labels, which must be "
                            f"integers, got {str(values.dtype).replace('torch.', '')}; pass the N x K probabilities")
        index, _, _ = labels_tensor(values, values.shape[0], values.device)
        return index
    if values.dim() != 2 or values.shape[1] == 0:
        raise ValueError(f"nce reads the source model's outputs, N samples x K source classes (or N predicted labels), "
                         f"got shape {tuple(values.shape)}")
    if not values.dtype.is_floating_point:
        raise TypeError(f"probabilities must be float32 or float64, got {str(values.dtype).replace('torch.', '')}")
    if not all_finite(values):
        raise_non_finite(values, "probabilities")
    # No check that rows sum to 1: the argmax of probabilities and of
    # logits is the same class.
    return values.argmax(dim=1)
