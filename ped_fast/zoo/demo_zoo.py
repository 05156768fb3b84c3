"""The data and the trained zoo of ``ped-fast demo``: offline, from data
that ships with scikit-learn, trained on this machine in a few minutes.

Target task (what is screened): scikit-learn's handwritten digits (1,797
8x8 images), 10 classes, each enlarged and drawn in white at a random place
over a darkened patch of scikit-learn's two sample photos, as a 32x32 RGB
image. On clean digits raw pixels already separate the classes, so any
network, even an untrained one, fine-tunes equally well and there is nothing
to rank; the clutter makes learned features matter. A fixed seeded
permutation splits the digits into three disjoint parts: a *source pool*
(used only to pretrain the zoo), the *target training split* (300 images:
screened, and fine-tuned on) and the *target test split* (fine-tuning
accuracy: the ground truth).

The zoo: eight checkpoints of four timm architecture families (tiny ResNet,
ConvNeXt, EfficientNet, ViT), each pretrained from scratch on a *source*
task that is not the target task:
- ``digits0-4``: classify the source pool's digits 0-4 (half the target's
  classes: a supervised task in the target's domain);
- ``rotation``: predict the rotation (0/90/180/270 degrees) of source-pool
  images (self-supervised, no digit labels);
- ``photo-rotation``: predict the rotation of patches of the photos alone
  (another domain: no digits);
so that they transfer to the target differently, as the models of a real
zoo do (fine-tuned accuracies from about 0.2 to 0.8). Each keeps its source
head, whose logits are the source-model probabilities some scorers use.

The reference set (ImageNet-val's role in the paper: unseen images of the
pretraining distribution, labels ignored) is source-pool digits drawn anew
(new places, new backgrounds) and rotated, and new photo patches.

Everything lives under ``CACHE/demo/<key>/``, where key hashes the
configuration: data folders and checkpoints are written under temporary
names and renamed when complete, and every fine-tuning result is kept, so a
killed run resumes and a finished one is reused.

Reproducibility: training is chaotic, so any change in the rounding of one
operation (another thread count, another CPU's vector instructions) ends
in other checkpoints, other fine-tuned accuracies and another ranking; the
demo's numbers differed so between machines. The data, the training and
the fine-tuning therefore run in processes of their own whose kernels are
pinned (PINNED_ENVIRONMENT, _pin_kernels): one thread each, torch's baseline
x86-64 kernels instead of the AVX2/AVX-512 ones the CPU would pick, MKL's
CPU-independent code path, no oneDNN or NNPACK (which choose kernels by
CPU), deterministic algorithms, on the CPU. What can still change the
numbers: other versions of torch (its kernels, MKL), timm (the models),
numpy or scikit-learn (the data), and a processor that is not x86-64.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ._files import atomic_directory, remove_temporaries
from .._validate import check_integer
from .cache import Cache
from .extract import available_cores
from .finetune import Recipe, finetune, train, write_json
from .models import save_model_dir, weights_identity

# Bump when the data or the training change in a way the configuration does
# not show, so that old caches are not reused (2: trained with pinned
# kernels, PINNED_ENVIRONMENT).
VERSION = 2
SOURCE_TASKS = ("digits0-4", "rotation", "photo-rotation")
GLYPH = 24  # pixels a digit spans in the 32x32 image
BACKGROUND = 0.35  # brightness of the photo behind the (white) digit
# The transform every checkpoint records: the images are already 32x32, so
# timm's eval transform is a no-op resize/crop then normalisation.
PRETRAINED_CFG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                  "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}


@dataclass(frozen=True)
class Checkpoint:
    """One zoo member: `architecture` (a timm name) with `model_args`
    (pairs for timm.create_model), pretrained on `source` for `epochs`."""
    label: str
    architecture: str
    source: str
    epochs: int
    model_args: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCE_TASKS:
            raise ValueError(f"checkpoint {self.label!r}: source must be one of {SOURCE_TASKS}, got {self.source!r}")


# The environment of the process that makes the data and trains and
# fine-tunes the zoo: read once, when torch and MKL start, so it is set
# for a new process. ATEN_CPU_CAPABILITY: torch's kernels built for any
# x86-64 CPU, not the AVX2 or AVX-512 ones a CPU would select (their
# vector widths sum in another order); MKL_CBWR: MKL's conditional
# numerical reproducibility, the code path that gives the same bits on
# every x86-64 CPU; one OpenMP and MKL thread, as _pin_kernels sets torch.
# Each of them changed the trained checkpoints' bits (measured: threads 1
# against 2, ATEN_CPU_CAPABILITY default against avx2, MKL_CBWR
# COMPATIBLE against automatic, oneDNN's ISA capped at SSE4.1).
PINNED_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1"}

_VIT = (("img_size", 32), ("patch_size", 8))
# Half-width EfficientNets: 128 features instead of 256, so that every
# model's feature dimension stays well below the 300 target images (SFDA
# saturates at 1.0 when D approaches N; it did at D=256).
_EFFICIENTNET = (("channel_multiplier", 0.5),)
# Epochs differ by family because they learn at different speeds (the ViT
# most slowly); within a family the source task sets how well it transfers.
ZOO = (
    Checkpoint("resnet-digits0-4", "test_resnet", "digits0-4", 10),
    Checkpoint("resnet-rotation", "test_resnet", "rotation", 5),
    Checkpoint("resnet-photo-rotation", "test_resnet", "photo-rotation", 5),
    Checkpoint("convnext-digits0-4", "test_convnext", "digits0-4", 10),
    Checkpoint("convnext-rotation", "test_convnext", "rotation", 5),
    Checkpoint("efficientnet-digits0-4", "test_efficientnet", "digits0-4", 10, _EFFICIENTNET),
    Checkpoint("efficientnet-rotation", "test_efficientnet", "rotation", 5, _EFFICIENTNET),
    Checkpoint("vit-digits0-4", "test_vit", "digits0-4", 20, _VIT),
)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and recipes of the demo. n_source + n_train + n_test digits
    must not exceed the 1,797 there are; n_photo patches feed the
    photo-rotation source task, n_reference images (half digits, half
    patches) the reference set."""
    n_source: int = 1000
    n_train: int = 300
    n_test: int = 497
    n_photo: int = 1000
    n_reference: int = 400
    zoo: tuple[Checkpoint, ...] = ZOO
    # Both recipes train small networks hard and fast: the zoo from scratch
    # (epochs come from each Checkpoint), and the fine-tuning for 72 steps,
    # where ImageNet-sized models would take Recipe()'s gentler defaults.
    source_recipe: Recipe = Recipe(lr=2e-3, head_lr_scale=1.0, batch_size=64)
    finetune_recipe: Recipe = Recipe(epochs=8, lr=1e-3, head_lr_scale=1.0, batch_size=32)
    finetune_seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = 0

    def key(self) -> str:
        text = json.dumps([VERSION, asdict(self)], sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DemoZoo:
    """What build_demo made. specs: one ``LABEL:ARCH=DIR`` per checkpoint;
    ground_truth: JSON {label: [fine-tuned test accuracy per seed]} (None
    when not asked for); trained: checkpoints this call trained,
    finetuned: fine-tuning runs (``LABEL.seedS``) it ran (both empty on a
    cached re-run); seconds: wall time of each stage this call ran (data,
    source training, fine-tuning; empty on a cached re-run)."""
    root: Path
    target_train: Path
    target_test: Path
    reference: Path
    specs: list[str]
    ground_truth: Path | None
    trained: list[str] = field(default_factory=list)
    finetuned: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def build_demo(cache_dir: str | os.PathLike[str], *, config: DemoConfig = DemoConfig(), ground_truth: bool = True, progress: bool = True,
               workers: int | None = None) -> DemoZoo:
    """Write the demo's image folders and train its zoo under
    ``cache_dir/demo/<config key>/``, reusing whatever a previous run
    finished; with ground_truth=True also fine-tune every checkpoint on the
    target training split (config.finetune_recipe, once per seed of
    config.finetune_seeds) and write each one's test accuracies, one per
    seed, to ``ground_truth.json``. workers: the processes that train and
    fine-tune (None: one per core this process may use); any number gives
    the same bits.

    The work runs in new Python processes with pinned kernels
    (PINNED_ENVIRONMENT, _pin_kernels), one CPU thread each, so that it
    gives the same checkpoints and accuracies on any x86-64 machine with
    the same library versions; whatever this process has set for torch
    does not reach it. The checkpoints, then the fine-tuning runs, are
    spread over one process per core: that recovers the time the pinned
    kernels cost without changing a bit. A cached re-run starts no
    process. One thread per process also because these models are so
    small that a second saves little, and on a busy machine two threads
    waiting for each other at every operation ran 20-50x slower (measured
    on the 2-core CI machine)."""
    if workers is not None:
        check_integer(workers, "workers", minimum=1)
    if config.n_source + config.n_train + config.n_test > 1797:
        raise ValueError(f"config asks for {config.n_source} + {config.n_train} + {config.n_test} digits; "
                         f"scikit-learn ships 1797")
    root = Path(cache_dir).expanduser() / "demo" / config.key()
    with _one_build(Cache(cache_dir), config.key(), root, progress):
        # No other build of this configuration runs now: every hidden entry
        # of its folders is a killed build's temporary.
        for folder in (root, root / "zoo", root / "finetune"):
            remove_temporaries(folder, hidden=True)
        demo = _layout(root, config)
        if not _complete(demo, config, ground_truth=ground_truth):
            done = _run_pinned(root, config, ground_truth=ground_truth, progress=progress,
                               workers=available_cores() if workers is None else workers)
            demo.trained, demo.finetuned, demo.seconds = done["trained"], done["finetuned"], done["seconds"]
        if ground_truth:
            demo.ground_truth = root / "ground_truth.json"
            write_json(demo.ground_truth, {ck.label: [_kept_accuracy(root, ck, seed, weights_identity(spec))
                                                      for seed in config.finetune_seeds]
                                           for spec, ck in zip(demo.specs, config.zoo)})
        return demo


@contextlib.contextmanager
def _one_build(cache: Cache, key: str, root: Path, progress: bool) -> Iterator[None]:
    """Hold the demo's lock (the cache's lock of entry ("demo", key)): one
    build of a configuration at a time, so that a second ``ped-fast demo``
    waits for the first and reuses its work instead of training the zoo
    again, and so that a build's temporaries are known to be dead."""
    with cache.lock("demo", key, blocking=False) as got:
        if got:
            yield
            return
    if progress:
        print(f"waiting for another ped-fast demo building {root}", file=sys.stderr, flush=True)
    with cache.lock("demo", key):
        yield


def _layout(root: Path, config: DemoConfig) -> DemoZoo:
    """Where everything of `config` lives under `root` (nothing done yet)."""
    return DemoZoo(root=root, target_train=root / "target-train", target_test=root / "target-test",
                   reference=root / "reference",
                   specs=[f"{ck.label}:{ck.architecture}={root / 'zoo' / ck.label}" for ck in config.zoo],
                   ground_truth=None)


def _complete(demo: DemoZoo, config: DemoConfig, *, ground_truth: bool) -> bool:
    """Whether the image folders, every checkpoint and (with ground_truth)
    every fine-tuning run of the current weights exist."""
    folders = [demo.target_train, demo.target_test, demo.reference] + \
        [demo.root / "zoo" / ck.label for ck in config.zoo]
    if not all(folder.is_dir() for folder in folders):
        return False
    return not ground_truth or all(_finetuned(demo.root, ck, seed, weights_identity(spec)) is not None
                                   for spec, ck in zip(demo.specs, config.zoo) for seed in config.finetune_seeds)


def _finetuned(root: Path, ck: Checkpoint, seed: int, weights: str) -> dict[str, Any] | None:
    """The kept result of fine-tuning checkpoint `ck` with `seed`, or None
    when there is none or it was of other weights (a retrained
    checkpoint's result is stale)."""
    result_file = root / "finetune" / f"{ck.label}.seed{seed}.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    return result if result is not None and result.get("weights") == weights else None


def _kept_accuracy(root: Path, ck: Checkpoint, seed: int, weights: str) -> float:
    """The test accuracy of a fine-tuning run the build has made."""
    result = _finetuned(root, ck, seed, weights)
    if result is None:
        raise RuntimeError(f"the demo build in {root} left no fine-tuning result for {ck.label} with seed {seed}")
    return float(result["accuracy"])


def _run_pinned(root: Path, config: DemoConfig, *, ground_truth: bool, progress: bool,
                workers: int) -> dict[str, Any]:
    """_build(root, config, ...) in a new Python process started with
    PINNED_ENVIRONMENT; returns its {"trained", "finetuned", "seconds"}.
    Its progress and any error go to this process's stderr; an interrupt
    (Ctrl-C) stops both. It imports this ped_fast: the folder holding the
    package goes first on its path unless already there (an editable
    install's folder is not on the path, an installed package's is)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="ped_fast_demo_") as tmp:
        job, done = Path(tmp) / "job.pickle", Path(tmp) / "done.json"
        job.write_bytes(pickle.dumps((root, config, ground_truth, progress, workers)))
        code = ("import sys; sys.argv[3] in sys.path or sys.path.insert(0, sys.argv[3]); "
                "from ped_fast.zoo.demo_zoo import _pinned_main; _pinned_main(sys.argv[1], sys.argv[2])")
        status = subprocess.run([sys.executable, "-c", code, str(job), str(done), package_parent],
                                env={**os.environ, **PINNED_ENVIRONMENT}, stdin=subprocess.DEVNULL).returncode
        if status != 0 or not done.is_file():
            raise RuntimeError(f"building the demo zoo in {root} failed: its training process exited with status "
                               f"{status} (its error is printed above)")
        outcome: dict[str, Any] = json.loads(done.read_text())
        return outcome


def _pinned_main(job: str | os.PathLike[str], done: str | os.PathLike[str]) -> None:
    """The training process's entry point (see _run_pinned)."""
    root, config, ground_truth, progress, workers = pickle.loads(Path(job).read_bytes())
    _pin_kernels()
    built = _build(root, config, ground_truth=ground_truth, progress=progress, workers=workers)
    Path(done).write_text(json.dumps(built))


def _pin_kernels() -> None:
    """torch's settings of the training process, beside PINNED_ENVIRONMENT:
    one intra-op thread; no oneDNN (mkldnn) or NNPACK, which pick their
    convolution kernels and blockings by CPU (convolutions then run as
    torch's own im2col + MKL matrix products); deterministic algorithms,
    so that an operation without a deterministic implementation fails
    instead of varying."""
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # stubs type the flag as its descriptor
    torch.backends.nnpack.set_flags(False)
    torch.use_deterministic_algorithms(True)


def _build(root: Path, config: DemoConfig, *, ground_truth: bool, progress: bool,
           workers: int = 1) -> dict[str, Any]:
    """Make what is missing under `root` (data, checkpoints, fine-tuning
    runs) with the torch settings of the calling process (build_demo's:
    the pinned one), training and fine-tuning in up to `workers` processes
    (1: in this one); returns {"trained", "finetuned", "seconds"}."""
    demo = _layout(root, config)
    start = time.perf_counter()
    data = _write_data(demo, config)
    demo.seconds["data"] = time.perf_counter() - start
    missing = [ck for ck in config.zoo if not (root / "zoo" / ck.label).is_dir()]
    with _runner(min(workers, max(len(missing), len(config.zoo) * len(config.finetune_seeds)))) as run:
        start = time.perf_counter()
        run(_train_checkpoint, [(ck, data, root / "zoo" / ck.label, config) for ck in missing],
            progress=progress, desc="training the demo zoo")
        demo.trained = [ck.label for ck in missing]
        demo.seconds["source training"] = time.perf_counter() - start
        if ground_truth:
            start = time.perf_counter()
            # Several seeds because single runs of one checkpoint differ by
            # up to 9 points with 300 training images; the evaluation
            # resamples them.
            runs = [(spec, ck, seed, weights_identity(spec), demo, config)
                    for spec, ck in zip(demo.specs, config.zoo) for seed in config.finetune_seeds]
            runs = [task for task in runs if _finetuned(root, *task[1:4]) is None]
            run(_finetune_run, runs, progress=progress, desc="fine-tuning the demo zoo")
            demo.finetuned = [f"{ck.label}.seed{seed}" for _, ck, seed, *_ in runs]
            demo.seconds["fine-tuning"] = time.perf_counter() - start
    return {"trained": demo.trained, "finetuned": demo.finetuned, "seconds": demo.seconds}


@contextlib.contextmanager
def _runner(workers: int) -> Iterator[Callable[..., None]]:
    """run(function, tasks, progress=, desc=): function(*task, progress=...)
    for every task, with a bar over the tasks. With 1 worker in this
    process (each task with its own bar too); else in `workers` new
    processes of one thread each, started once, pinned like this one (they
    inherit its environment; _pin_kernels). Every task is seeded and
    single-threaded, so where it runs changes no bit."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    if workers <= 1:
        def run(function: Callable[..., object], tasks: Sequence[tuple[Any, ...]], *, progress: bool,
                desc: str) -> None:
            for task in tqdm(tasks, desc=desc, unit="run", disable=not progress):
                function(*task, progress=progress)

        yield run
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_pin_kernels) as pool:
        def pooled(function: Callable[..., object], tasks: Sequence[tuple[Any, ...]], *, progress: bool,
                   desc: str) -> None:
            with tqdm(total=len(tasks), desc=desc, unit="run", disable=not progress) as bar:
                for done in as_completed([pool.submit(function, *task, progress=False) for task in tasks]):
                    done.result()
                    bar.update()

        yield pooled


def _finetune_run(spec: str, ck: Checkpoint, seed: int, weights: str, demo: DemoZoo, config: DemoConfig, *,
                  progress: bool) -> None:
    """Fine-tune one checkpoint with one seed, on the CPU, and keep the
    result in finetune/LABEL.seedS.json with the checkpoint's identity, so
    that a killed build resumes and a retrained checkpoint is fine-tuned
    again."""
    result = finetune(spec, demo.target_train, demo.target_test, recipe=config.finetune_recipe, seed=seed,
                      device="cpu", progress=progress)
    write_json(demo.root / "finetune" / f"{ck.label}.seed{seed}.json", {**result, "weights": weights})


def _write_data(demo: DemoZoo, config: DemoConfig) -> _Data | None:
    """Write the missing image folders; returns the generated data, or None
    when everything (folders and checkpoints) already exists."""
    folders = (demo.target_train, demo.target_test, demo.reference)
    if all(folder.is_dir() for folder in folders) and \
            all((demo.root / "zoo" / ck.label).is_dir() for ck in config.zoo):
        return None
    data = _Data(config)
    for folder, images, labels in ((demo.target_train, data.train, data.train_labels),
                                   (demo.target_test, data.test, data.test_labels)):
        if not folder.is_dir():
            with atomic_directory(folder) as tmp:
                _write_pngs(tmp, images, [str(int(label)) for label in labels])
    if not demo.reference.is_dir():
        with atomic_directory(demo.reference) as tmp:
            _write_pngs(tmp, *data.reference())
    return data


def _write_pngs(folder: Path, images: npt.NDArray[Any], subfolders: Sequence[str]) -> None:
    from PIL import Image

    for index, (image, sub) in enumerate(zip(images, subfolders)):
        (folder / sub).mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / sub / f"{index:05d}.png")


class _Data:
    """The demo's images as uint8 N x 32 x 32 x 3 arrays (what the PNGs
    hold), generated deterministically from the config's seed."""

    def __init__(self, config: DemoConfig) -> None:
        from PIL import Image
        from sklearn.datasets import load_digits, load_sample_images

        self.config = config
        # Halved, so that a 32x32 patch shows a recognisable piece of scene.
        self._photos = [np.asarray(Image.fromarray(photo).reduce(2)) for photo in load_sample_images().images]
        digits = load_digits()
        order = np.random.default_rng(config.seed).permutation(len(digits.target))
        parts = np.split(order, [config.n_source, config.n_source + config.n_train])
        parts[2] = parts[2][:config.n_test]
        self._source_digits = digits.images[parts[0]] / 16.0
        self.source, self.train, self.test = (self._render(digits.images[part] / 16.0, seed=config.seed + k)
                                              for k, part in enumerate(parts))
        self.source_labels, self.train_labels, self.test_labels = (digits.target[part] for part in parts)

    def photo_patches(self, n: int, seed: int) -> npt.NDArray[Any]:
        """n random 32x32 patches of the sample photos."""
        rng = np.random.default_rng([seed, 1])
        out = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for i in range(n):
            photo = self._photos[rng.integers(len(self._photos))]
            y, x = rng.integers(photo.shape[0] - 32), rng.integers(photo.shape[1] - 32)
            out[i] = photo[y:y + 32, x:x + 32]
        return out

    def _render(self, digits: npt.NDArray[Any], seed: int) -> npt.NDArray[Any]:
        """8x8 intensities in [0, 1] -> uint8 32x32x3: each digit enlarged to
        GLYPH pixels (bilinear), drawn in white at a random place over a
        darkened photo patch. The clutter is what makes the task need
        learned features: raw pixels no longer separate the classes."""
        rng = np.random.default_rng([seed, 2])
        glyphs = torch.nn.functional.interpolate(torch.as_tensor(digits, dtype=torch.float32)[:, None],
                                                 size=(GLYPH, GLYPH), mode="bilinear", align_corners=False)
        glyph_array = glyphs[:, 0].clamp(0, 1).numpy()
        alpha = np.zeros((len(digits), 32, 32, 1), dtype=np.float32)
        for a, glyph, (y, x) in zip(alpha, glyph_array, rng.integers(33 - GLYPH, size=(len(digits), 2))):
            a[y:y + GLYPH, x:x + GLYPH, 0] = glyph
        background = self.photo_patches(len(digits), seed).astype(np.float32) * BACKGROUND
        return np.round((1 - alpha) * background + alpha * 255).astype(np.uint8)

    def source_task(self, source: str, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any], int]:
        """(images uint8 N x 32 x 32 x 3, labels, number of classes) of a
        source task; rotation tasks draw one rotation per image."""
        if source == "digits0-4":
            keep = self.source_labels < 5
            return self.source[keep], self.source_labels[keep], 5
        images = self.source if source == "rotation" else self.photo_patches(self.config.n_photo, seed)
        turns = np.random.default_rng([seed, 3]).integers(4, size=len(images))
        return _rotate(images, turns), turns, 4

    def reference(self) -> tuple[npt.NDArray[Any], list[str]]:
        """(images, subfolder of each): source-pool digits drawn at new places
        over new backgrounds and rotated, and photo patches."""
        n_digits = self.config.n_reference // 2
        rng = np.random.default_rng([self.config.seed, 4])
        pick = rng.choice(len(self.source), size=min(n_digits, len(self.source)), replace=False)
        digits = _rotate(self._render(self._source_digits[pick], seed=self.config.seed + 5),
                         rng.integers(4, size=len(pick)))
        photos = self.photo_patches(self.config.n_reference - len(pick), self.config.seed + 6)
        return np.concatenate([digits, photos]), ["digits"] * len(digits) + ["photos"] * len(photos)


def _rotate(images: npt.NDArray[Any], turns: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return np.stack([np.rot90(image, k=int(k)) for image, k in zip(images, turns)])


def _tensors(images: npt.NDArray[Any]) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W normalised like
    PRETRAINED_CFG, i.e. what timm's eval transform makes of the PNGs."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(PRETRAINED_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PRETRAINED_CFG["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def _train_checkpoint(ck: Checkpoint, data: _Data, directory: Path, config: DemoConfig, *, progress: bool) -> None:
    import timm

    seed = config.seed ^ zlib.crc32(ck.label.encode())
    images, labels, classes = data.source_task(ck.source, seed)
    dataset = torch.utils.data.TensorDataset(_tensors(images), torch.as_tensor(labels, dtype=torch.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(ck.architecture, pretrained=False, num_classes=classes,
                                  **dict(ck.model_args))
    recipe = Recipe(**{**asdict(config.source_recipe), "epochs": ck.epochs})
    train(model, dataset, recipe, seed=seed, device="cpu", progress=progress, desc=f"pretrain {ck.label}")
    save_model_dir(model.cpu(), directory, architecture=ck.architecture, model_args=dict(ck.model_args),
                   pretrained_cfg=PRETRAINED_CFG)
