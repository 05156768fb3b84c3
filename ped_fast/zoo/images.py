"""Image folders: listing, fingerprint and decoding.

A labelled set uses torchvision's ImageFolder layout (``DIR/CLASS/...image``;
labels are the indices of the sorted class-folder names). A reference set
(ImageNet-val in the paper) is every image under a folder, in any layout;
its labels are never used.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """The images of a folder, in a fixed order.

    root: the folder. paths: image paths relative to root ('/'-separated,
    sorted). labels: int64 class index of each path (None for a reference
    set). classes: class-folder names, label c is classes[c]. fingerprint:
    a hash of every path with its size and modification time: the cache key
    of the set's contents (copying the folder, or touching a file, changes
    it)."""
    root: str
    paths: tuple
    labels: np.ndarray | None
    classes: tuple
    fingerprint: str

    def __len__(self):
        return len(self.paths)

    def file(self, index) -> str:
        return os.path.join(self.root, self.paths[index])

    def subset(self, count, seed=0) -> "ImageSet":
        """`count` of the images, drawn at random (seeded: the same for every
        model and every run), kept in their order; the whole set when it has
        no more than `count`."""
        if count >= len(self):
            return self
        chosen = np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
        return self._take(chosen, f"subset:{count}:{seed}")

    def shuffled(self, seed=0) -> "ImageSet":
        """The images in a seeded random order (a pass that may stop early
        then sees a random sample of the set)."""
        return self._take(np.random.default_rng(seed).permutation(len(self)), f"shuffled:{seed}")

    def _take(self, indices, how) -> "ImageSet":
        labels = None if self.labels is None else self.labels[indices]
        fingerprint = hashlib.sha256(f"{self.fingerprint}\n{how}".encode()).hexdigest()[:32]
        return ImageSet(self.root, tuple(self.paths[i] for i in indices), labels, self.classes, fingerprint)


def image_folder(root, *, what="data") -> ImageSet:
    """The labelled images of an ImageFolder-layout folder. `what` names the
    folder in error messages."""
    root = _folder(root, what)
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{what} folder {str(root)!r} has no class subfolders; expected the ImageFolder layout "
                         f"{what.upper()}/CLASS/IMAGE (one subfolder per class)")
    paths, labels = [], []
    for index, name in enumerate(classes):
        found = _images_under(root, name)
        if not found:
            raise ValueError(f"class folder {str(root / name)!r} of the {what} folder holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        paths += found
        labels += [index] * len(found)
    return ImageSet(str(root), tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes),
                    _fingerprint(root, paths, "imagefolder"))


def image_files(root, *, what="reference") -> ImageSet:
    """Every image under `root` (any layout; no labels)."""
    root = _folder(root, what)
    paths = _images_under(root, "")
    if not paths:
        raise ValueError(f"{what} folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(str(root), tuple(paths), None, (), _fingerprint(root, paths, "files"))


def load_rgb(path):
    """Decode one image file into an RGB PIL image (raises on failure)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _folder(root, what) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} folder {str(root)!r} is not a folder")
    return path


def _images_under(root: Path, sub: str) -> list:
    """Sorted relative paths of the images under root/sub (recursive,
    following links, hidden files and folders skipped)."""
    found = []
    for folder, subfolders, files in os.walk(root / sub, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = Path(folder).relative_to(root)
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((relative / name).as_posix())
    return sorted(found)


def _fingerprint(root: Path, paths, layout) -> str:
    digest = hashlib.sha256(layout.encode())
    for path in paths:
        stat = os.stat(root / path)
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]
