"""Synthetic labelled image folders for the tests and the benchmarks (not
part of the library: users bring their own images)."""
from pathlib import Path

import numpy as np


def write_image_folder(root, *, classes=3, per_class=8, size=32, seed=0, labelled=True) -> Path:
    """Write a small synthetic image set (PNG): ROOT/class{c}/{i}.png when
    labelled, else ROOT/{c}-{i}.png. Each class has its own colour and
    stripe frequency plus seeded noise, so that features differ between
    classes but no two images are equal."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    grid = np.arange(size, dtype=np.float64)
    for c in range(classes):
        folder = root / f"class{c}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        colour = 60 + 150 * rng.random(3)
        stripes = 0.5 + 0.5 * np.sin(grid * (c + 1) * np.pi / size)
        for i in range(per_class):
            pattern = colour * stripes[:, None, None] * rng.uniform(0.6, 1.0)
            pixels = np.clip(np.broadcast_to(pattern, (size, size, 3)) + 40 * rng.standard_normal((size, size, 3)),
                             0, 255)
            name = f"{i}.png" if labelled else f"{c}-{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
    return root
