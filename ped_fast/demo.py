"""The built-in demo: rank a few "models" (simple feature extractors) of
scikit-learn's digits the way ped_fast ranks a model zoo, and check the
ranking against each model's linear-probe accuracy (the fine-tuning stand-in).
Needs no download: the digits ship with scikit-learn."""
from __future__ import annotations

import time

import numpy as np

from .evaluate import evaluate
from .score import ped_score


def digits_models(seed=0):
    """{model name: (features N x D, reference features M x D)}, labels.

    The reference set plays ImageNet-val's role in the paper: the same
    model's features on other images (here the transposed digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images / 16.0
    labels = digits.target
    rng = np.random.default_rng(seed)
    wide = rng.standard_normal((64, 256)) / 8.0
    narrow = rng.standard_normal((64, 24)) / 8.0

    def pixels(imgs):
        return imgs.reshape(len(imgs), 64)

    def pooled(imgs, k):
        return imgs.reshape(len(imgs), 8 // k, k, 8 // k, k).mean(axis=(2, 4)).reshape(len(imgs), -1)

    extractors = {
        "pixels-64": pixels,
        "pooled-16": lambda imgs: pooled(imgs, 2),
        "pooled-4": lambda imgs: pooled(imgs, 4),
        "random-relu-256": lambda imgs: np.maximum(pixels(imgs) @ wide, 0.0),
        "random-relu-24": lambda imgs: np.maximum(pixels(imgs) @ narrow, 0.0),
        "noisy-pixels-64": lambda imgs: pixels(imgs) + 0.5 * rng.standard_normal((len(imgs), 64)),
    }
    reference_images = images.transpose(0, 2, 1)
    return {name: (f(images), f(reference_images)) for name, f in extractors.items()}, labels


def probe_accuracy(features, labels, seed=0):
    """Held-out accuracy of a logistic-regression probe: the ground truth."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.5, random_state=seed,
                                                        stratify=labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(probe.fit(train_x, train_y).score(test_x, test_y))


def run_demo(backend="auto", out=print):
    models, labels = digits_models()
    out(f"Ranking {len(models)} feature extractors of scikit-learn's digits ({len(labels)} images, "
        f"{len(np.unique(labels))} classes) with SFDA and PED+SFDA; backend {backend}")
    out(f"{'model':<17} {'D':>4} {'PED steps':>9} {'SFDA':>7} {'PED+SFDA':>9} {'probe acc':>9} {'time (ms)':>9}")
    baseline, moved, truth = {}, {}, {}
    for name, (x, reference) in models.items():
        start = time.perf_counter()
        score = ped_score(x, labels, "sfda", reference=reference, return_baseline=True, backend=backend)
        elapsed = 1e3 * (time.perf_counter() - start)
        baseline[name], moved[name], truth[name] = score.baseline, score.ped, probe_accuracy(x, labels)
        out(f"{name:<17} {x.shape[1]:>4} {score.result.steps:>9} {score.baseline:>7.4f} {score.ped:>9.4f} "
            f"{truth[name]:>9.4f} {elapsed:>9.1f}")
    out("")
    out(f"{'ranking by':<10} {'weighted tau':>12} {'kendall tau':>11} {'pearson':>8} {'rel@1':>6}")
    for title, scores in (("SFDA", baseline), ("PED+SFDA", moved)):
        m = evaluate(scores, truth)
        out(f"{title:<10} {m['weighted_tau']:>12.3f} {m['kendall_tau']:>11.3f} {m['pearson']:>8.3f} {m['rel@1']:>6.3f}")
    return 0
