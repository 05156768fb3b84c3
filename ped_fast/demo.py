"""The built-in demo: PED on scikit-learn's digits as seen by a few simple
"models" (feature extractors), on every CPU backend, with a readable report.
Needs no download: the digits ship with scikit-learn."""
from __future__ import annotations

import time

import numpy as np

from . import available_backends
from .ped import ped


def digits_models(seed=0):
    """{model name: (features N x D, reference features M x D)}, labels.

    The reference set plays ImageNet-val's role in the paper: the same
    model's features on other images (here the transposed digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images / 16.0
    labels = digits.target
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((64, 256)) / 8.0

    def pixels(imgs):
        return imgs.reshape(len(imgs), 64)

    extractors = {
        "pixels-64": pixels,
        "pooled-16": lambda imgs: imgs.reshape(len(imgs), 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(imgs), 16),
        "random-relu-256": lambda imgs: np.maximum(pixels(imgs) @ projection, 0.0),
        "noisy-pixels-64": lambda imgs: pixels(imgs) + 0.5 * rng.standard_normal((len(imgs), 64)),
    }
    reference_images = images.transpose(0, 2, 1)
    return {name: (f(images), f(reference_images)) for name, f in extractors.items()}, labels


def run_demo(backend="auto", out=print):
    models, labels = digits_models()
    backends = [backend] if backend != "auto" else [
        name for name, status in available_backends().items() if status.available and name in ("reference", "cpu")
    ]
    out(f"PED on scikit-learn digits: {len(labels)} images, {len(np.unique(labels))} classes; "
        f"backends: {', '.join(backends)}")
    out(f"{'model':<18} {'D':>4} {'steps':>5} {'P_0':>10} {'P_last':>10} {'mean |shift|':>12}  "
        + "  ".join(f"{b + ' (ms)':>15}" for b in backends))
    for name, (x, reference) in models.items():
        timings, result = [], None
        for b in backends:
            start = time.perf_counter()
            result = ped(x, labels, reference=reference, backend=b)
            timings.append(1e3 * (time.perf_counter() - start))
        p = result.position_changes
        out(f"{name:<18} {x.shape[1]:>4} {result.steps:>5} {p[0]:>10.4g} {p[-1]:>10.4g} "
            f"{np.linalg.norm(result.shift, axis=1).mean():>12.4g}  " + "  ".join(f"{t:>15.1f}" for t in timings))
    return 0
