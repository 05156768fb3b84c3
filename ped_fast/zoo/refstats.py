"""Reference statistics: the per-dimension mean and standard deviation of a
model's features on a reference image set (ImageNet-val in the paper), which
PED's rescaling needs.

They are streamed: each batch of features is reduced to (count, mean, M2)
in float64 and merged into the running total (Chan, Golub and LeVeque's
parallel update), so one pass suffices, memory does not grow with the
reference set, and partial sums from separate batches or workers merge
exactly. The published code keeps every model's whole reference feature
matrix instead.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import numpy.typing as npt
import torch

from .._validate import check_integer, check_number
from .cache import Cache, CacheEntry, content_key
from .errors import checking_inputs
from .extract import Settings, Stage, check_models, run_alone
from .images import ImageSet, image_set

# Rows of a feature matrix reduced at once by stats_of(): bounds the float64
# working copy (rows x D x 8 bytes) whatever the matrix's size.
_CHUNK_ROWS = 8192
# A reference budget: None (every image), a number of images, or "auto".
Budget = Union[int, Literal["auto"], None]


class RunningMoments:
    """count, mean and M2 (sum of squared deviations from the mean) per
    dimension, float64, updated batch by batch or merged with another (mean
    and M2 are empty until the first rows)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: npt.NDArray[np.float64] = np.zeros(0)
        self.m2: npt.NDArray[np.float64] = np.zeros(0)

    def update(self, batch: npt.ArrayLike | torch.Tensor) -> RunningMoments:
        """Add the rows of `batch` (B x D, numpy or torch, any float dtype)."""
        x = np.asarray(batch.detach().cpu() if isinstance(batch, torch.Tensor) else batch, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"batch must be B x D (2-D), got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        mean = x.mean(axis=0)
        centred = x - mean
        return self._merge(x.shape[0], mean, np.einsum("ij,ij->j", centred, centred))

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Add another RunningMoments' rows (computed elsewhere)."""
        if other.count:
            self._merge(other.count, other.mean, other.m2)
        return self

    def _merge(self, count: int, mean: npt.NDArray[np.float64], m2: npt.NDArray[np.float64]) -> RunningMoments:
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean.copy(), m2.copy()
            return self
        if mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge statistics of {mean.shape[0]} dimensions into {self.mean.shape[0]}")
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total
        return self

    @property
    def std(self) -> npt.NDArray[np.float64]:
        """Population standard deviation (ddof=0, as PED's rescaling uses)."""
        return np.sqrt(self.m2 / self.count)


@dataclass
class ReferenceStats:
    """mean and std (float64, length D) of a model's reference features.

    count: reference images used. skipped: relative paths of images that
    could not be decoded. source: where the numbers came from (for error
    messages). key: the cache key (None when not cached). cached: read from
    the cache rather than computed in this call. seconds: time spent."""
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    count: int
    source: str
    skipped: list[str] = field(default_factory=list)
    key: str | None = None
    cached: bool = False
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def check_dim(self, dim: int, model: str) -> None:
        """Raise if these statistics cannot rescale `model`'s D = dim features."""
        if self.dim != dim:
            raise ValueError(f"reference statistics from {self.source} have {self.dim} dimensions but model {model!r} "
                             f"has {dim}-dimensional features; they belong to another model (delete that file to "
                             f"recompute them)")


def stats_of(features: npt.NDArray[Any], *, source: str = "features") -> ReferenceStats:
    """Streamed statistics of an M x D matrix (e.g. a memory-mapped
    NAME.reference.npy), chunk by chunk."""
    if getattr(features, "ndim", None) != 2:
        raise ValueError(f"{source} must be an M x D matrix, got shape {getattr(features, 'shape', None)}")
    if features.shape[0] == 0:
        raise ValueError(f"{source} has no rows")
    moments = RunningMoments()
    for start in range(0, features.shape[0], _CHUNK_ROWS):
        moments.update(features[start:start + _CHUNK_ROWS])
    return ReferenceStats(mean=moments.mean, std=moments.std, count=moments.count, source=source)


def load_stats_file(path: str | os.PathLike[str]) -> ReferenceStats:
    """ReferenceStats from an .npz file with arrays `mean` and `std`."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [name for name in ("mean", "std") if name not in data.files]
        if missing:
            raise ValueError(f"{str(path)!r} must hold arrays 'mean' and 'std', but has no {missing} "
                             f"(it has {data.files})")
        mean, std = (np.asarray(data[name], dtype=np.float64) for name in ("mean", "std"))
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"{str(path)!r}: 'mean' and 'std' must be vectors of one length, got shapes "
                         f"{mean.shape} and {std.shape}")
    return ReferenceStats(mean=mean, std=std, count=0, source=repr(str(path)))


def reference_stats(models: Any, reference: Any, *, cache: Cache | str | os.PathLike[str] | None = None, pretrained: bool = True,
                    seed: int = 0, batch_size: int = 64, device: str | torch.device | None = None,
                    precision: str = "fp32", workers: int | None = None, models_per_pass: int | None = None,
                    progress: bool = True, use_ema: bool = True, reference_images: Budget = None,
                    reference_tolerance: float = 0.01, threads: int | None = None) -> dict[str, ReferenceStats]:
    """Each model's ReferenceStats on the images under `reference` (any
    layout; labels ignored), streamed and cached: {label: ReferenceStats}.

    models: model specs (see ped_fast.zoo.models). Models with the same data
    config share each decoded batch. Raises ExtractionError, after finishing
    the others, when a model fails. pretrained, seed, use_ema: as in
    extract(). reference_images, reference_tolerance: the budget (None:
    every image; N; "auto"; see ReferenceStage)."""
    with checking_inputs():
        images = image_set(reference, what="reference", labelled=False)
        settings = Settings.make(pretrained=pretrained, seed=seed, batch_size=batch_size, device=device,
                                 precision=precision, workers=workers, models_per_pass=models_per_pass,
                                 progress=progress, use_ema=use_ema, threads=threads)
        cache = Cache.of(cache)
        stage = ReferenceStage(images, reference_images, reference_tolerance)
        specs = check_models(models, settings, cache)
    stats: dict[str, ReferenceStats] = run_alone(specs, stage, settings, cache)
    return stats


def export_stats(stats: Mapping[str, ReferenceStats], out: str | os.PathLike[str]) -> list[Path]:
    """Write OUT/LABEL.reference_stats.npz (arrays mean, std) for each
    {label: ReferenceStats}, the layout `screen --features` reads; returns
    the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for label, item in stats.items():
        path = out / f"{label}.reference_stats.npz"
        np.savez(path, mean=item.mean, std=item.std)
        written.append(path)
    return written


# "auto": a model's reference pass never stops before this many images,
# whatever its estimates say (a few batches' kurtosis is too noisy to trust).
_AUTO_MINIMUM = 256


def check_budget(images: Budget, tolerance: float = 0.01) -> tuple[Budget, float]:
    """(images, tolerance) of a reference budget: `images` None (every image
    of the reference set, the paper's setting), a positive integer (a seeded
    random subset of that many, the same for every model), or "auto" (stop
    each model's pass once its mean and std are known to `tolerance`, a
    relative standard error, see ReferenceStage)."""
    if images is not None and images != "auto":
        check_integer(images, "reference_images", minimum=1)
    check_number(tolerance, "reference_tolerance", minimum=0.0, strict=True)
    return images, float(tolerance)


class ReferenceStage(Stage):
    """Streams a reference set into RunningMoments, one per model.

    budget: None (every image), N (a seeded random subset of N images), or
    "auto": the images in a seeded random order, each model's pass stopped
    once every dimension's mean is known to `tolerance` of its std (standard
    error std / sqrt(n)) and its std to `tolerance` relative (standard error
    std sqrt((kurtosis - 1) / (4 n)), the kurtosis estimated from the
    images seen), after at least 256 images. The statistics then rest on
    the images seen (`count`)."""
    name = "reference"

    def __init__(self, images: ImageSet, budget: Budget = None, tolerance: float = 0.01) -> None:
        budget, tolerance = check_budget(budget, tolerance)
        if isinstance(budget, int):
            images = images.subset(budget)
        elif budget == "auto":
            images = images.shuffled()
        super().__init__(images)
        self.budget, self.tolerance = budget, tolerance

    def key(self, spec: Any, identity: Any, data_config: Any, precision: str) -> str:
        key: str = super().key(spec, identity, data_config, precision)
        return key if self.budget != "auto" else content_key(key, "auto", self.tolerance, _AUTO_MINIMUM)

    def result(self, entry: CacheEntry, label: str, *, cached: bool) -> ReferenceStats:
        meta = entry.meta
        return ReferenceStats(mean=np.array(entry.arrays["mean"]), std=np.array(entry.arrays["std"]),
                              count=meta["count"], source=f"the cache entry {entry.path}", skipped=meta["skipped"],
                              key=entry.key, cached=cached, seconds=0.0 if cached else meta["seconds"])

    def sink(self, cache: Cache, key: str, loaded: Any) -> _MomentsSink:
        return _MomentsSink(self, cache, key)


class _MomentsSink:
    def __init__(self, stage: ReferenceStage, cache: Cache, key: str) -> None:
        self.stage, self.cache, self.key, self.images = stage, cache, key, stage.images
        self.moments = RunningMoments()
        self.precision = _Precision() if stage.budget == "auto" else None
        self.done = False

    def add(self, index: Any, features: torch.Tensor, logits: Any) -> None:
        self.moments.update(features)
        if self.precision is not None:
            self.precision.update(features)
            self.done = self.moments.count >= _AUTO_MINIMUM and \
                self.precision.relative_error() <= self.stage.tolerance

    def finish(self, skipped: Any, meta: Mapping[str, Any], label: str) -> ReferenceStats:
        if not self.moments.count:
            raise ValueError(f"no image of the reference folder {self.images.root!r} could be decoded")
        entry = self.cache.put("reference", self.key, dict(meta, count=self.moments.count),
                               {"mean": self.moments.mean, "std": self.moments.std})
        return self.stage.result(entry, label, cached=False)

    def abandon(self) -> None:
        self.moments = RunningMoments()  # lets the statistics go


class _Precision:
    """Power sums of the features about their first batch's mean (float64),
    for the standard errors of the running mean and std."""

    def __init__(self) -> None:
        self.shift: npt.NDArray[np.float64] | None = None
        self.count = 0
        self.sums: npt.NDArray[np.float64] = np.zeros((4, 0))

    def update(self, batch: npt.ArrayLike | torch.Tensor) -> None:
        x = np.asarray(batch.detach().cpu() if isinstance(batch, torch.Tensor) else batch, dtype=np.float64)
        if self.shift is None:
            self.shift, self.sums = x.mean(axis=0), np.zeros((4, x.shape[1]))
        y = x - self.shift
        power = y.copy()
        for k in range(4):
            self.sums[k] += power.sum(axis=0)
            power *= y
        self.count += x.shape[0]

    def relative_error(self) -> float:
        """The largest standard error over the dimensions: of a mean,
        relative to the dimension's std; of a std, relative to itself.
        Constant dimensions (std 0) are known exactly."""
        n = self.count
        m1, m2, m3, m4 = self.sums / n
        variance = m2 - m1 * m1
        fourth = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 ** 4
        varying = variance > 0
        if not varying.any():
            return 0.0
        kurtosis = fourth[varying] / variance[varying] ** 2
        std_error = np.sqrt(np.maximum(kurtosis - 1.0, 0.0) / (4.0 * n))
        return float(max(1.0 / np.sqrt(n), std_error.max()))
