"""Image sets: listing, fingerprint and decoding.

A labelled set is read from one of:

- an image folder in torchvision's ImageFolder layout (``DIR/CLASS/...image``;
  labels are the indices of the sorted class-folder names);
- a manifest, a CSV or JSON-lines file of ``path,label`` rows (paths
  relative to the manifest's folder);
- a Hugging Face ``datasets`` dataset: a folder written by
  ``Dataset.save_to_disk``, or parquet or arrow files (read by the module
  ``ped_fast.zoo.datasets``; the package is the optional extra ``datasets``).

A reference set (ImageNet-val in the paper) is every image under a folder,
in any layout, or every row of a manifest or dataset; its labels are never
used.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import PIL.Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
DATA_FILE_SUFFIXES = (".parquet", ".arrow")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """The images of a folder, manifest or dataset, in a fixed order.

    root: what the set was read from (the folder, the manifest file, the
    dataset), as messages and reports name it. paths: each image's name:
    for a folder, its path relative to root ('/'-separated, sorted); for a
    manifest, its path as the manifest gives it; for a dataset, "row N".
    labels: int64 class index of each path (None for a reference set).
    classes: class names, label c is classes[c]. fingerprint: the cache key
    of the set's contents (for files, a hash of every path with its size
    and modification time: copying the folder, or touching a file, changes
    it). opener: None when paths are files under root, else a picklable
    callable turning a path into what load_rgb reads (a file path or a
    file-like object); it travels to decoding workers and Ray tasks, so it
    holds a description of its source, never the images."""
    root: str
    paths: tuple[str, ...]
    labels: npt.NDArray[np.int64] | None
    classes: tuple[str, ...]
    fingerprint: str
    opener: Callable[[str], str | IO[bytes]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> str | IO[bytes]:
        """What load_rgb decodes for image `index`: a file path, or a
        file-like object holding a dataset row's encoded image."""
        if self.opener is None:
            return os.path.join(self.root, self.paths[index])
        return self.opener(self.paths[index])

    def subset(self, count: int, seed: int = 0) -> ImageSet:
        """`count` of the images, drawn at random (seeded: the same for every
        model and every run), kept in their order; the whole set when it has
        no more than `count`."""
        if count >= len(self):
            return self
        chosen = np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
        return self._take(chosen, f"subset:{count}:{seed}")

    def shuffled(self, seed: int = 0) -> ImageSet:
        """The images in a seeded random order (a pass that may stop early
        then sees a random sample of the set)."""
        return self._take(np.random.default_rng(seed).permutation(len(self)), f"shuffled:{seed}")

    def _take(self, indices: npt.NDArray[np.intp], how: str) -> ImageSet:
        labels = None if self.labels is None else self.labels[indices]
        fingerprint = hashlib.sha256(f"{self.fingerprint}\n{how}".encode()).hexdigest()[:32]
        return ImageSet(self.root, tuple(self.paths[i] for i in indices), labels, self.classes, fingerprint,
                        self.opener)


def source_kind(source: str | os.PathLike[str] | ImageSet) -> str:
    """How `source` is read: "set" (already an ImageSet), "dataset" (a
    Hugging Face datasets folder written by save_to_disk, parquet or arrow
    files, or a glob pattern of them that is no existing path), "manifest"
    (a .csv, .jsonl or .ndjson file) or "folder" (an image folder)."""
    if isinstance(source, ImageSet):
        return "set"
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.suffix.lower() in DATA_FILE_SUFFIXES:
        return "dataset"
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return "manifest"
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return "dataset"
    if not path.exists() and any(char in text for char in "*?["):
        return "dataset"
    return "folder"


def image_set(source: str | os.PathLike[str] | ImageSet, *, what: str = "data", labelled: bool = True,
              image_column: str | None = None, label_column: str | None = None) -> ImageSet:
    """The images of `source`, whatever its kind (source_kind): an image
    folder (ImageFolder layout when `labelled`, else every image under it),
    a manifest, a Hugging Face dataset, or an ImageSet (returned as it is).

    image_column, label_column: the columns of a manifest (default "path"
    and "label") or dataset (default "image" and "label", else its only
    Image and only ClassLabel column); label_column is not read when not
    `labelled`. `what` names the source in error messages."""
    kind = source_kind(source)
    if kind in ("set", "folder"):
        given = [name for name, value in (("image_column", image_column), ("label_column", label_column))
                 if value is not None]
        if given:
            shown = source.root if isinstance(source, ImageSet) else os.fspath(source)
            raise ValueError(f"{' and '.join(given)} {'name columns' if len(given) > 1 else 'names a column'} of a "
                             f"dataset or a manifest; {what} {shown!r} is "
                             f"{'an ImageSet' if kind == 'set' else 'an image folder'}")
    if isinstance(source, ImageSet):
        if labelled and source.labels is None:
            raise ValueError(f"{what} must be a labelled image set, got the unlabelled set {source.root!r}")
        return source
    if kind == "folder":
        return image_folder(source, what=what) if labelled else image_files(source, what=what)
    if kind == "manifest":
        return manifest(source, what=what, labelled=labelled, image_column=image_column, label_column=label_column)
    from .datasets import dataset_images  # datasets is an optional extra: imported only for a dataset

    return dataset_images(source, what=what, labelled=labelled, image_column=image_column,
                          label_column=label_column)


def manifest(file: str | os.PathLike[str], *, what: str = "data", labelled: bool = True,
             image_column: str | None = None, label_column: str | None = None) -> ImageSet:
    """The images a CSV (header line naming the columns) or JSON-lines (one
    object per line) manifest lists: image_column (default "path") holds
    each image's path, relative to the manifest's folder or absolute;
    label_column (default "label") its class, a name or an integer.

    A row without a path, a line that is not a JSON object, or a column no
    row has is an error naming the line or the columns there are; a row
    without a label is left out with a warning; a listed file that is
    missing or cannot be decoded is skipped when the set is decoded, as an
    undecodable file of a folder is."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} manifest {os.fspath(file)!r} "
                                f"{'is not a file' if path.exists() else 'does not exist'}")
    image_column, label_column = image_column or "path", (label_column or "label") if labelled else None
    raw = path.read_bytes()
    rows, columns = (_csv_rows if path.suffix.lower() == ".csv" else _json_rows)(raw, path, what)
    shown = ", ".join(columns) or "none"
    for column, role in ((image_column, "image_column"), (label_column, "label_column")):
        if column is not None and column not in columns:
            raise ValueError(f"{what} manifest {str(path)!r} has no column {column!r} ({role}); its columns: {shown}")
    paths, values, unlabelled = [], [], []
    for line, row in rows:
        image = row.get(image_column)
        if not isinstance(image, str) or not image:
            raise ValueError(f"{what} manifest {str(path)!r} line {line}: no image path in column {image_column!r} "
                             f"(got {image!r})")
        if label_column is not None and row.get(label_column) in (None, ""):
            unlabelled.append(f"line {line}")
            continue
        paths.append(image)
        values.append(row.get(label_column))
    _warn_unlabelled(unlabelled, len(rows), f"{what} manifest {str(path)!r}", label_column)
    if not paths:
        raise ValueError(f"{what} manifest {str(path)!r} lists no {'labelled ' if labelled else ''}images")
    labels, classes = class_labels(values, f"{what} manifest {str(path)!r}") if labelled else (None, ())
    base = str(path.parent)
    digest = hashlib.sha256(f"manifest\n{image_column}\n{label_column}\n".encode() + raw)
    for image in paths:
        try:
            stat = os.stat(os.path.join(base, image))
            digest.update(f"\n{image}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        except OSError:  # skipped when decoded; becoming readable changes the set
            digest.update(f"\n{image}\tmissing".encode())
    return ImageSet(str(path), tuple(paths), labels, classes, digest.hexdigest()[:32],
                    functools.partial(os.path.join, base))


def class_labels(values: Sequence[object], what: str) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """(int64 class index of each value, class names): integer labels (ints,
    or strings that all read as integers) sorted by value, any other labels
    sorted as strings; every class has an image."""
    bad = next((value for value in values if isinstance(value, bool) or not isinstance(value, (int, str))), None)
    if bad is not None:
        raise ValueError(f"{what}: labels must be class names or integers, got {bad!r}")
    names = [str(value) for value in values]
    distinct = set(names)
    numeric = all(_INTEGER.fullmatch(name) for name in distinct)
    classes = tuple(sorted(distinct, key=int if numeric else None))
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[name] for name in names], dtype=np.int64), classes


_INTEGER = re.compile(r"[+-]?\d+")


def _csv_rows(raw: bytes, path: Path, what: str) -> tuple[list[tuple[int, dict[str | None, Any]]], list[str]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} manifest {str(path)!r} is not UTF-8 text: {error}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [name for name in (reader.fieldnames or []) if name]
    if not columns:
        raise ValueError(f"{what} manifest {str(path)!r} is empty; expected a header line naming its columns, "
                         f"e.g. path,label")
    return [(reader.line_num, row) for row in reader if any(row.values())], columns


def _json_rows(raw: bytes, path: Path, what: str) -> tuple[list[tuple[int, dict[str | None, Any]]], list[str]]:
    rows: list[tuple[int, dict[str | None, Any]]] = []
    columns: dict[str, None] = {}
    for line, text in enumerate(raw.decode("utf-8-sig", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{what} manifest {str(path)!r} line {line} is not JSON: {error}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{what} manifest {str(path)!r} line {line}: expected a JSON object such as "
                             f'{{"path": "cat/1.jpg", "label": "cat"}}, got {type(row).__name__}')
        rows.append((line, row))
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def _warn_unlabelled(unlabelled: list[str], total: int, what: str, label_column: str | None) -> None:
    if unlabelled:
        shown = ", ".join(unlabelled[:5])
        warnings.warn(f"{len(unlabelled)} of {total} rows of {what} have no label in column {label_column!r} and "
                      f"were left out: {shown}{', ...' if len(unlabelled) > 5 else ''}", RuntimeWarning, stacklevel=3)


def image_folder(root: str | os.PathLike[str], *, what: str = "data") -> ImageSet:
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


def image_files(root: str | os.PathLike[str], *, what: str = "reference") -> ImageSet:
    """Every image under `root` (any layout; no labels)."""
    root = _folder(root, what)
    paths = _images_under(root, "")
    if not paths:
        raise ValueError(f"{what} folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(str(root), tuple(paths), None, (), _fingerprint(root, paths, "files"))


def load_rgb(path: str | os.PathLike[str] | IO[bytes]) -> PIL.Image.Image:
    """Decode one image (a file path, or a file-like object holding an
    encoded image) into an RGB PIL image (raises on failure)."""
    from PIL import Image

    with Image.open(path) as image:  # the target is Any to mypy for Python 3.10 (Pillow types __enter__ with Self)
        rgb: PIL.Image.Image = image.convert("RGB")
    return rgb


def _folder(root: str | os.PathLike[str], what: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} folder {str(root)!r} is not a folder")
    return path


def _images_under(root: Path, sub: str) -> list[str]:
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


def _fingerprint(root: Path, paths: Sequence[str], layout: str) -> str:
    digest = hashlib.sha256(layout.encode())
    for path in paths:
        stat = os.stat(root / path)
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]
