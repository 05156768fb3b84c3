"""Dataset-shaped benchmark inputs on which PED runs all six steps.

With class means drawn independently in high dimension, every pair sits at
about the same distance, so either every pair overlaps (one step separates
everything) or none does. Real label sets are hierarchical instead, and so is
this data: groups of ~10 sibling classes whose means differ by 0.5 sigma per
dimension (distance ~0.7 sqrt(D) sigma, inside the overlap threshold
nsigma * 2 R ~ 1.2 sqrt(D) sigma), and groups 3 sigma per dimension apart
(~4.2 sqrt(D) sigma, never overlapping). Each step then moves siblings a
little and P_t decays slowly, so no step is rejected.

PED_FAST_BENCH_SHAPES=tiny gives the same names to shapes small enough that
the suite runs in seconds (six steps still run): for exercising the
benchmarks' output checks (tests/test_bench_checks.py), not for timing.
"""
import os

import numpy as np
import torch

SHAPE_SETS = {  # PED_FAST_BENCH_SHAPES: {name: (N, D, C)}
    "full": {"sun397": (19850, 2048, 397), "imagenet": (50000, 2048, 1000)},
    "tiny": {"sun397": (1200, 32, 40), "imagenet": (2000, 48, 100)},
}
SHAPE_SET = os.environ.get("PED_FAST_BENCH_SHAPES", "full")
if SHAPE_SET not in SHAPE_SETS:
    raise ValueError(f"PED_FAST_BENCH_SHAPES must be one of {', '.join(map(repr, SHAPE_SETS))}, got {SHAPE_SET!r}")
SHAPES = SHAPE_SETS[SHAPE_SET]
REFERENCE_ROWS = 2000


def make_features(n, d, c, dtype=torch.float32, seed=0, siblings=10):
    """(X: N x D, labels: N int64, reference G: M x D) as CPU tensors."""
    g = torch.Generator().manual_seed(seed)
    groups = (c + siblings - 1) // siblings
    group_of = torch.arange(c) // siblings
    means = 3.0 * torch.randn(groups, d, generator=g)[group_of] + 0.5 * torch.randn(c, d, generator=g)
    labels = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])
    labels = labels[torch.randperm(n, generator=g)]
    x = torch.randn(n, d, generator=g, dtype=torch.float32)
    x += means[labels]
    reference = 2.0 * torch.randn(REFERENCE_ROWS, d, generator=g) + 0.1
    return x.to(dtype), labels, reference.to(dtype)


def as_numpy(*tensors):
    return tuple(np.asarray(t) for t in tensors)


# The screening benchmarks (bench_zoo.py, bench_ray.py): images are scaled
# down 10x at PED_FAST_BENCH_SHAPES=tiny, and timm's tiny test models get a
# 64 x 64 transform.
IMAGE_SCALE = 1 if SHAPE_SET == "full" else 10
SMALL_CONFIG = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}


def tiny_zoo(root, architectures, per_class):
    """A 10-class image folder root/data (per_class images each, 64 x 64,
    scaled by IMAGE_SCALE) and one seeded checkpoint folder per
    architecture; returns the model specs."""
    import timm

    from image_data import write_image_folder
    from ped_fast.zoo.models import save_model_dir

    write_image_folder(root / "data", classes=10, per_class=per_class // IMAGE_SCALE, size=64)
    specs = []
    for seed, architecture in enumerate(architectures):
        torch.manual_seed(seed)
        save_model_dir(timm.create_model(architecture), root / architecture, architecture=architecture,
                       pretrained_cfg=SMALL_CONFIG)
        specs.append(f"{architecture}={root / architecture}")
    return specs
