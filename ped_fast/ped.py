"""ped(): PED's dynamics (docs/spec.md §1) on any backend.

Only the C class means move, by a shift shared by all samples of a class, and
a class's spread never changes; so the dynamics run on C x D means in float64
and X is read once (class_stats) and written once (integrate), instead of
being rescaled and re-reduced at every step as in the published code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union, cast

import torch

from . import _backends
from ._validate import (
    all_finite,
    check_count,
    check_inplace,
    check_number,
    features_tensor,
    labels_tensor,
    Array,
    ArrayLike,
    raise_non_finite,
    to_tensor,
    to_user,
)

RESCALE_OPTIONS = ("reference", "self", None)
Rescale = Literal["reference", "self", None]
# ped()'s reference: features (M x D) or a (mean, std) pair of length-D vectors.
Reference = Union[ArrayLike, tuple[ArrayLike, ArrayLike]]


@dataclass
class PEDResult:
    """What ped() returns. Arrays are numpy when the features were numpy and
    torch tensors (on the features' device) when they were torch.

    features: N x D moved features, in the input's dtype.
    shift: C x D per-class shift in the original feature space
        (features = input + shift[class of each row]).
    classes: the sorted unique labels; row c of `shift` belongs to classes[c].
    steps: number of steps applied.
    position_changes: P_t of every step computed, the last one being the
        rejected step when the loop stopped before max_steps.
    diagnostics: coincident_means (label pairs whose means coincide: they
        exert no force on each other), singleton_classes (labels with one
        sample: radius 0), evaluated_pairs and overlapping_pairs per step.
    backend: the backend that ran.
    """

    features: Array
    shift: Array
    classes: Array
    steps: int
    position_changes: list[float]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    backend: str = ""


def check_parameters(*, time_step: float = 0.1, nsigma: float = 0.6, force_constant: float = 1.0,
                     exit_ratio: float = 0.5, max_steps: int = 6, eps: float = 1e-3,
                     rescale: Rescale = "reference") -> tuple[float, float, float, float, int, float]:
    """ped()'s hyper-parameters checked (errors name each one) and returned
    as (time_step, nsigma, force_constant, exit_ratio, max_steps, eps);
    callers that do other work before ped() (ped_score) check them first."""
    if rescale not in RESCALE_OPTIONS:
        raise ValueError(f"rescale must be 'reference', 'self' or None, got {rescale!r}")
    return (check_number(time_step, "time_step"), check_number(nsigma, "nsigma"),
            check_number(force_constant, "force_constant"), check_number(exit_ratio, "exit_ratio"),
            check_count(max_steps, "max_steps"), check_number(eps, "eps", strict=True))


def step_coefficient(time_step: float, force_constant: float) -> float:
    """coef = 1/2 dt^2 k of checked parameters (docs/spec.md §1.1), capped at 1.

    The step length min(coef * o, o) equals min(coef, 1) * o, bit for bit,
    for o >= 0: a coef above 1 acts as 1. Capping keeps coef finite when
    1/2 dt^2 k overflows (time_step=1e200 is finite), where min(inf * 0, 0)
    would be NaN; products, not `**`, because float.__pow__ raises
    OverflowError where a product gives inf."""
    return min(0.5 * time_step * time_step * force_constant, 1.0)


def ped(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    reference: Reference | None = None,
    rescale: Rescale = "reference",
    time_step: float = 0.1,
    nsigma: float = 0.6,
    force_constant: float = 1.0,
    exit_ratio: float = 0.5,
    max_steps: int = 6,
    eps: float = 1e-3,
    backend: str = "auto",
    inplace: bool = False,
) -> PEDResult:
    """Move the classes of `features` (N x D) apart by PED's dynamics.

    reference: the same model's features on the reference set (M x D; the
        paper uses ImageNet-val), or a precomputed (mean, std) pair of length-D
        vectors. Used when rescale="reference" (the paper's setting).
    rescale: "reference"; "self" (mean and std of `features` itself); or None
        (no rescaling).
    time_step, nsigma, force_constant, exit_ratio, max_steps, eps: see
        docs/spec.md §1.1; the defaults are the paper's.
    backend: "auto", "reference", "cpu", ... (see available_backends()).
    inplace: write the moved features into `features` itself, allocating no
        copy of it.
    """
    time_step, nsigma, force_constant, exit_ratio, max_steps, eps = check_parameters(
        time_step=time_step, nsigma=nsigma, force_constant=force_constant, exit_ratio=exit_ratio,
        max_steps=max_steps, eps=eps, rescale=rescale)
    check_inplace(inplace, features)

    x, as_numpy = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    num_classes = classes.shape[0]
    backend_name, launcher = _backends.resolve(backend, x.device)

    counts, mean, var = launcher.class_stats(x, index, num_classes)
    # Non-finite input makes its class's statistics non-finite: checked on
    # C x D numbers instead of another pass over X.
    if not all_finite(mean, var):
        raise_non_finite(x, "features")
    center, scale = _rescaling(reference, rescale, eps, x, backend, counts, mean, var)

    # Rescaled space: mu = (mean - m) / s, R_c^2 = sum_d var_cd / s_d^2.
    mu = mean.sub_(center).div_(scale)
    radius = var.div_(scale * scale).sum(dim=1).sqrt_()
    del var

    coef = step_coefficient(time_step, force_constant)
    bounds = launcher.make_bounds(num_classes, x.device)
    total = torch.zeros_like(mu)
    delta = torch.empty_like(mu)
    position_changes: list[float] = []
    evaluated: list[int] = []
    overlapping: list[int] = []
    coincident: set[tuple[int, int]] = set()
    steps = 0
    for _ in range(max_steps):
        forces = launcher.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=bounds, out=delta)
        position_changes.append(forces.position_change)
        evaluated.append(forces.evaluated_pairs)
        overlapping.append(forces.active_pairs)
        coincident.update(map(tuple, forces.coincident.tolist()))
        first = position_changes[0]
        # P_0 == 0 (nothing overlaps) stops with zero steps, where the
        # published code computes 0/0.
        if first == 0.0 or not forces.position_change / first > exit_ratio:
            break
        mu += forces.delta
        total += forces.delta
        steps += 1
        if bounds is not None:
            bounds.advance(forces.delta)
    del mu, delta

    shift = total.mul_(scale).to(x.dtype)
    moved: Array
    if inplace:
        if steps:
            launcher.integrate(x, index, shift, x)
        moved = cast(Array, features)  # check_inplace made sure it is one
    else:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        if steps:
            launcher.integrate(x, index, shift, out)
        else:
            out.copy_(x)
        moved = to_user(out, as_numpy)

    label_list = classes.tolist()
    diagnostics = {
        "coincident_means": sorted((label_list[i], label_list[j]) for i, j in coincident),
        "singleton_classes": [label_list[c] for c in torch.nonzero(counts == 1).flatten().tolist()],
        "evaluated_pairs": evaluated,
        "overlapping_pairs": overlapping,
    }
    return PEDResult(
        features=moved,
        shift=to_user(shift, as_numpy),
        classes=to_user(classes, as_numpy),
        steps=steps,
        position_changes=position_changes,
        diagnostics=diagnostics,
        backend=backend_name,
    )


def _rescaling(reference: Reference | None, rescale: Rescale, eps: float, x: torch.Tensor, backend: str,
               counts: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, s): float64 length-D centre and scale of the rescaled space."""
    dim = x.shape[1]
    if rescale != "reference":
        if reference is not None:
            raise ValueError(f"reference is only used with rescale='reference', but rescale={rescale!r}")
        if rescale is None:
            return torch.zeros(dim, dtype=torch.float64, device=x.device), torch.ones(dim, dtype=torch.float64, device=x.device)
        # rescale="self": the moments of all of X follow from the class ones
        # (law of total variance), so X is not read again.
        weights = counts.to(torch.float64).unsqueeze(1) / x.shape[0]
        center = (weights * mean).sum(dim=0)
        total_var = (weights * (var + (mean - center) ** 2)).sum(dim=0)
        return center, total_var.sqrt().clamp_min(eps)
    if reference is None:
        raise ValueError(
            "reference is required with rescale='reference': pass the reference features (M x D), a "
            "(mean, std) pair, or choose rescale='self' or rescale=None"
        )
    if isinstance(reference, tuple):
        if len(reference) != 2:
            raise ValueError(f"reference as a tuple must be (mean, std), got a tuple of {len(reference)} items")
        center, std = (_reference_vector(v, name, dim, x.device) for v, name in zip(reference, ("mean", "std")))
        if bool((std < 0).any()):
            raise ValueError(f"reference std must be >= 0, got {float(std.min())} in dimension {int(std.argmin())}")
        return center, std.clamp_min(eps)
    g, _ = features_tensor(reference, "reference")
    if g.shape[1] != dim:
        raise ValueError(f"reference has {g.shape[1]} columns but features has {dim}")
    _, launcher = _backends.resolve(backend if g.device == x.device else "auto", g.device)
    zeros = torch.zeros(g.shape[0], dtype=torch.int64, device=g.device)
    _, g_mean, g_var = launcher.class_stats(g, zeros, 1)
    if not all_finite(g_mean, g_var):
        raise_non_finite(g, "reference")
    return g_mean[0].to(x.device), g_var[0].sqrt().clamp_min(eps).to(x.device)


def _reference_vector(value: ArrayLike, name: str, dim: int, device: torch.device) -> torch.Tensor:
    v, _ = to_tensor(value, f"reference {name}")
    if v.dim() != 1 or v.shape[0] != dim:
        raise ValueError(f"reference {name} must be a vector of length {dim} (the feature dimension), got shape {tuple(v.shape)}")
    if v.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"reference {name} must be float32 or float64, got {str(v.dtype).replace('torch.', '')}")
    if not bool(torch.isfinite(v).all()):
        bad = int(torch.nonzero(~torch.isfinite(v))[0, 0])
        raise ValueError(f"reference {name} has {int((~torch.isfinite(v)).sum())} non-finite values; the first is at index {bad}")
    return v.to(device=device, dtype=torch.float64)
