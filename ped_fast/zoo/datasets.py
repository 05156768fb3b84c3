"""Hugging Face ``datasets`` datasets as image sets.

The one module that imports ``datasets`` (the optional extra ``datasets``).
A set is read from a folder written by ``Dataset.save_to_disk``, or from
parquet or arrow files (one file, or a glob pattern of shards). Images are
decoded from a row's encoded bytes by images.load_rgb, as a folder's files
are, so that the same image gives the same pixels from either.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from .images import DATA_FILE_SUFFIXES, ImageSet, _warn_unlabelled, class_labels

# How a set is loaded: ("disk", a save_to_disk folder), or ("parquet" | "arrow", its files). The dataset
# objects themselves are Any: datasets has no annotations.
_Load = tuple[str, str | tuple[str, ...]]


def dataset_images(source: str | os.PathLike[str], *, what: str = "data", labelled: bool = True,
                   image_column: str | None = None, label_column: str | None = None) -> ImageSet:
    """The images of a Hugging Face dataset (see images.image_set). Rows
    whose label is missing (None, or -1 in a ClassLabel column) are left
    out with a warning; a row whose image is missing or cannot be decoded
    is skipped when the set is decoded, as an undecodable file is."""
    shown = f"{what} dataset {os.fspath(source)!r}"
    load = _source(source, what)
    dataset = _open(load, shown)
    image_column = _column(dataset, image_column, "image", "Image", "image_column", shown)
    _check_image(dataset.features[image_column], image_column, shown)
    labels: npt.NDArray[np.int64] | None
    classes: tuple[str, ...]
    paths, labels, classes = tuple(f"row {row}" for row in range(len(dataset))), None, ()
    if labelled:
        label_column = _column(dataset, label_column, "label", "ClassLabel", "label_column", shown)
        paths, labels, classes = _labels(dataset, label_column, shown)
    if not paths:
        raise ValueError(f"{shown} has no {'labelled ' if labelled else ''}rows")
    digest = hashlib.sha256(f"hf-dataset\n{load[0]}\n{dataset._fingerprint}\n{image_column}\n"
                            f"{label_column if labelled else None}".encode())
    for file in _files_of(load):
        stat = os.stat(file)
        digest.update(f"\n{os.path.basename(file)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return ImageSet(os.fspath(source), paths, labels, classes, digest.hexdigest()[:32],
                    _Rows(load, image_column, dataset._fingerprint, shown, dataset))


class _Rows:
    """ImageSet.opener of a dataset: "row N" -> the row's encoded image (a
    BytesIO), or the file path an Image feature holds without its bytes.

    Pickles as the dataset's description (how to load it, its fingerprint),
    never its rows: a decoding worker or a Ray task reopens it on first use
    (memory-mapped arrow files, so reopening reads no images), and refuses
    it when its fingerprint is not the one listed."""

    def __init__(self, load: _Load, column: str, fingerprint: str, shown: str, dataset: Any = None) -> None:
        self.load, self.column, self.fingerprint, self.shown = load, column, fingerprint, shown
        self._rows = None if dataset is None else self._encoded(dataset)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _rows=None)

    def __call__(self, path: str) -> str | IO[bytes]:
        if self._rows is None:
            dataset = _open(self.load, self.shown)
            if dataset._fingerprint != self.fingerprint:
                raise ValueError(f"{self.shown} changed since it was listed (fingerprint {self.fingerprint}, now "
                                 f"{dataset._fingerprint})")
            self._rows = self._encoded(dataset)
        value = self._rows[int(path.rpartition(" ")[2])][self.column]
        if isinstance(value, dict):  # an Image feature: its bytes, else the file it names
            value = value.get("bytes") or value.get("path")
        if not value:
            raise ValueError(f"{path} has no image in column {self.column!r}")
        return io.BytesIO(value) if isinstance(value, bytes) else value

    def _encoded(self, dataset: Any) -> Any:
        """The image column alone, its Image feature not decoded by datasets
        (load_rgb decodes it, as it decodes files)."""
        from datasets import Image  # type: ignore[import-untyped]  # mypy flags the first import only

        rows = dataset.select_columns([self.column])
        if isinstance(rows.features[self.column], Image):
            rows = rows.cast_column(self.column, Image(decode=False))
        return rows


def _source(source: str | os.PathLike[str], what: str) -> _Load:
    """("disk", folder) for a save_to_disk folder, or ("parquet" | "arrow",
    files) for data files (a glob pattern matched here, sorted)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(entry.name for entry in os.scandir(path) if (Path(entry.path) / "state.json").is_file())
            raise ValueError(f"{what} {text!r} is a DatasetDict with splits {', '.join(splits) or 'none'}: give one "
                             f"split's folder, e.g. {os.path.join(text, splits[0] if splits else 'train')!r}")
        return "disk", str(path)
    files = [str(path)] if path.exists() else [file for file in sorted(glob.glob(str(path))) if Path(file).is_file()]
    if not files:
        pattern = text != glob.escape(text)
        raise FileNotFoundError(f"{what} {text!r} {'matches no file' if pattern else 'does not exist'}")
    suffixes = {Path(file).suffix.lower() for file in files}
    if len(suffixes) != 1 or not suffixes <= set(DATA_FILE_SUFFIXES):
        raise ValueError(f"{what} {text!r}: expected parquet or arrow files ({', '.join(DATA_FILE_SUFFIXES)}, one "
                         f"kind), got {', '.join(sorted(suffixes))}")
    return suffixes.pop()[1:], tuple(files)


def _open(load: _Load, what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{what}: reading a Hugging Face dataset needs the datasets package "
                         f"(pip install 'ped_fast[datasets]')") from None
    kind, where = load
    if kind == "disk":
        return datasets.load_from_disk(where)
    if kind == "parquet":
        return datasets.load_dataset("parquet", data_files=list(where), split="train")
    return datasets.concatenate_datasets([datasets.Dataset.from_file(file) for file in where])


def _files_of(load: _Load) -> list[str]:
    """The files whose size and modification time join the fingerprint:
    the dataset's own fingerprint does not follow a data file rewritten in
    place (an arrow file's is a hash of its path)."""
    where = load[1]
    if isinstance(where, str):  # ("disk", folder)
        return sorted(str(entry) for entry in Path(where).iterdir() if entry.is_file())
    return list(where)


def _column(dataset: Any, given: str | None, default: str, feature: str, role: str, shown: str) -> str:
    """The column `given`, else the column named `default`, else the only
    column whose feature type is `feature`."""
    columns = dataset.column_names
    if given is not None:
        if given not in columns:
            raise ValueError(f"{shown} has no column {given!r} ({role}); its columns: {', '.join(columns)}")
        return given
    if default in columns:
        return default
    typed: list[str] = [name for name in columns if type(dataset.features[name]).__name__ == feature]
    if len(typed) == 1:
        return typed[0]
    raise ValueError(f"{shown} has no column {default!r} and {'several' if typed else 'no'} {feature} "
                     f"column{'s' if typed else ''}: name it with {role} (--{role.replace('_', '-')}); its columns: "
                     f"{', '.join(columns)}")


def _check_image(feature: Any, column: str, shown: str) -> None:
    from datasets import Image, Value

    if not (isinstance(feature, Image) or isinstance(feature, Value) and feature.dtype in ("binary", "large_binary")):
        raise ValueError(f"{shown}: image column {column!r} holds {feature}; expected images (an Image feature) or "
                         f"encoded image bytes")


def _labels(dataset: Any, column: str, shown: str) -> tuple[tuple[str, ...], npt.NDArray[np.int64], tuple[str, ...]]:
    """(paths "row N" of the labelled rows, their class indices, the class
    names): a ClassLabel column's names (those that label a row, in the
    feature's order), else integers or strings as images.class_labels
    orders them."""
    from datasets import ClassLabel, Value

    feature = dataset.features[column]
    values = dataset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()
    if isinstance(feature, ClassLabel):
        present = [row for row, value in enumerate(values) if value is not None and value >= 0]  # -1: no label
        used = np.unique([values[row] for row in present]).astype(np.int64)
        labels = np.searchsorted(used, [values[row] for row in present]).astype(np.int64)
        classes = tuple(feature.names[i] for i in used)
    elif isinstance(feature, Value) and (feature.dtype.startswith(("int", "uint")) or "string" in feature.dtype):
        present = [row for row, value in enumerate(values) if value not in (None, "")]
        labels, classes = class_labels([values[row] for row in present], shown)
    else:
        raise ValueError(f"{shown}: label column {column!r} holds {feature}; expected a ClassLabel, integers or "
                         f"strings")
    if len(present) < len(values):
        kept = np.zeros(len(values), dtype=bool)
        kept[present] = True
        _warn_unlabelled([f"row {row}" for row in np.flatnonzero(~kept)], len(values), shown, column)
    return tuple(f"row {row}" for row in present), labels, classes
