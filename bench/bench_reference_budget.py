"""Reference budget (issue 15 point 5): how far PED's scores, the zoo's
rankings and the evaluation against ground truth move when each model's
reference statistics rest on fewer images than the whole reference folder,
and how much time that saves.

PED rescales each model's features by their per-dimension mean and std on a
reference set (ImageNet-val's 50,000 images per model in the paper: as much
as the target set costs again). screen(reference_images=...) streams every
image (None, the paper's setting and the default), a seeded subset of N
(the same for every model), or "auto": each model's pass stops once every
dimension's mean and std are known to reference_tolerance (refstats.
ReferenceStage). Two zoos:

1. demo: the demo zoo (ped_fast.zoo.demo_zoo: eight checkpoints trained on
   this machine, fine-tuning ground truth, 300 target images, 400
   reference images), screened as `ped-fast demo` screens it;
2. generated: six of timm's tiny test architectures with seeded random
   weights (32x32 transform; no ground truth) on a 10-class target of 300
   photo crops whose classes overlap (write_target) and a generated
   5,000-image JPEG reference (random crops of scikit-learn's sample
   photos, stripes with noise, random shapes).

Two measurements per zoo and budget:

- screens: screen() with the budget, on a cache that already holds the
  target features, so that its reference pass is the work that differs;
  this is what a user of the budget gets (one seeded draw), and its time;
- draws: the same budget drawn with seeds 0..R-1 from each model's
  features of every reference image, and scored with ped_score, so that
  the spread over draws shows whether seed 0 was typical. Draw 0 is the
  library's own draw (ImageSet.subset and .shuffled use seed 0), and the
  script checks that it reproduces the screen's scores and image counts.

and, per model, the tails of its reference features (kurtosis), which set
how many images "auto" needs.

Run: python bench/bench_reference_budget.py [--quick] [--draws R] [--work DIR] [--json FILE]
(--quick: 1,000 generated reference images, fewer budgets and draws; for
developing this script, a few minutes). docs/benchmarks.md gives the figures.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ped_fast.zoo.demo import SCORERS  # the scorers `ped-fast demo` reports

BATCH = 64  # screen()'s default batch size: "auto" checks its stopping rule after each batch
# One torch thread everywhere: the machine this was measured on has 2 cores
# shared with other jobs, where two threads waiting for each other at every
# operation made a screen's time vary 2-4x from one budget to the next.
THREADS = 1


@dataclass(frozen=True)
class Budget:
    """A reference budget: images None (every image), N, or "auto" with
    tolerance."""
    images: object = None
    tolerance: float = 0.01

    @property
    def name(self):
        if self.images is None:
            return "all"
        return f"auto {self.tolerance:g}" if self.images == "auto" else f"N={self.images}"


@dataclass
class Zoo:
    name: str
    specs: list
    target: Path
    reference: Path  # ImageFolder layout (a subfolder per kind), so that extract() reads it too
    truth: dict | None
    budgets: list
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- the zoos

def demo_zoo(work, quick):
    from ped_fast.zoo.demo_zoo import build_demo
    from ped_fast.zoo.report import load_ground_truth

    start = time.perf_counter()
    built = build_demo(work / "demo-cache", progress=False)
    truth = dict(load_ground_truth(built.ground_truth))
    budgets = [Budget(), Budget(100), Budget(200), Budget("auto", 0.05), Budget("auto", 0.02)]
    if quick:
        budgets = [Budget(), Budget(100), Budget("auto", 0.05)]
    return Zoo("demo", built.specs, built.target_train, built.reference, truth, budgets,
               [f"built or reused in {time.perf_counter() - start:.0f} s"])


GENERATED_MODELS = (("test_resnet", {}), ("test_convnext", {}), ("test_efficientnet", {}),
                    ("test_vit", {"img_size": 32, "patch_size": 8}), ("test_byobnet", {}), ("test_nfnet", {}))
SMALL_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}


def generated_zoo(work, quick):
    import timm
    import torch

    from ped_fast.zoo.models import save_model_dir

    size = 1000 if quick else 5000
    root = work / f"generated-{size}"
    reference = written(root / "reference", lambda folder: write_reference(folder, size))
    target = written(root / "target", write_target)
    specs = []
    for seed, (architecture, args) in enumerate(GENERATED_MODELS):
        folder = root / "zoo" / architecture
        if not folder.is_dir():
            torch.manual_seed(seed)
            save_model_dir(timm.create_model(architecture, **args), folder, architecture=architecture,
                           model_args=args, pretrained_cfg=SMALL_CONFIG)
        specs.append(f"{architecture}={folder}")
    if quick:
        budgets = [Budget(), Budget(200), Budget(500), Budget("auto", 0.05), Budget("auto", 0.02)]
    else:
        budgets = [Budget(), Budget(500), Budget(1000), Budget(2000), Budget("auto", 0.05), Budget("auto", 0.02),
                   Budget("auto", 0.01)]
    return Zoo("generated", specs, target, reference, None, budgets)


def written(folder, write):
    """`folder`, written by write(path) under a temporary name first unless
    it exists: an interrupted run leaves no half-written folder behind to
    be reused."""
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write(partial)
        partial.rename(folder)
    return folder


def write_target(root, classes=10, per_class=30, seed=1):
    """A 10-class target of 64x64 JPEGs whose classes overlap, so that PED
    moves the features (on well separated classes, such as
    images.write_image_folder's stripes, it stops at step 0 and the
    reference cannot matter): class c is crops of one of scikit-learn's
    sample photos around a point of its own, jittered by up to 48 pixels,
    of side 48-128, flipped at random, with pixel noise."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    for c in range(classes):
        photo = photos[c % len(photos)]
        cx, cy = rng.integers(100, photo.width - 100), rng.integers(100, photo.height - 100)
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(48, 129))
            x = int(np.clip(cx + rng.integers(-48, 49) - side // 2, 0, photo.width - side))
            y = int(np.clip(cy + rng.integers(-48, 49) - side // 2, 0, photo.height - side))
            image = photo.crop((x, y, x + side, y + side)).resize((64, 64), Image.BILINEAR)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            pixels = np.asarray(image, dtype=np.float64) + rng.uniform(5, 40) * rng.standard_normal((64, 64, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg",
                                                                          quality=90)


def write_reference(root, count, seed=0):
    """`count` 64x64 JPEGs in three kinds, a third each: random crops of
    scikit-learn's two sample photos (side 24-256 pixels, resized, flipped
    at random), stripes of random colour, frequency and direction with
    noise, and random rectangles and ellipses on a coloured ground."""
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    grid = np.mgrid[0:64, 0:64].astype(np.float64)
    kinds = ("photos", "stripes", "shapes")
    for kind in kinds:
        (root / kind).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        kind = kinds[i % 3]
        if kind == "photos":
            photo = photos[rng.integers(len(photos))]
            side = int(rng.integers(24, 257))
            x, y = int(rng.integers(photo.width - side)), int(rng.integers(photo.height - side))
            image = photo.crop((x, y, x + side, y + side)).resize((64, 64), Image.BILINEAR)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        elif kind == "stripes":
            angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.05, 0.6)
            wave = 0.5 + 0.5 * np.sin(frequency * (np.cos(angle) * grid[0] + np.sin(angle) * grid[1]))
            colour = 40 + 200 * rng.random(3)
            pixels = wave[..., None] * colour + rng.uniform(5, 50) * rng.standard_normal((64, 64, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        else:
            image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(256, size=3)))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.integers(1, 6)):
                x0, y0 = rng.integers(0, 56, size=2)
                x1, y1 = np.array([x0, y0]) + rng.integers(8, 64, size=2)
                box = [int(x0), int(y0), int(x1), int(y1)]
                fill = tuple(int(c) for c in rng.integers(256, size=3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        image.save(root / kind / f"{i:05d}.jpg", quality=int(rng.integers(70, 96)))


# ---------------------------------------------------------------- measuring

REPEAT = "all, again"  # the full reference screened a second time: how much the timing moves between equal runs


def screens(zoo, cache):
    """{budget name: {"rows": {model: (images used, reference seconds,
    {scorer: ped score})}, "wall": seconds}} from screen() with each
    budget, then the full reference again (REPEAT). Each screen starts from
    a copy of a cache that holds the target features and no reference
    statistics (cache/"warm", filled by a screen with reference "self"), so
    that its reference pass runs cold and is the only extraction."""
    from ped_fast.zoo import failed, screen

    warm = cache / "warm"
    screen(zoo.specs, zoo.target, "self", scorers=SCORERS, cache=warm, progress=False, threads=THREADS)
    out = {}
    for index, budget in enumerate([*zoo.budgets, Budget()]):
        name = budget.name if index < len(zoo.budgets) else REPEAT
        copy = shutil.copytree(warm, cache / f"budget-{index}")
        start = time.perf_counter()
        results = screen(zoo.specs, zoo.target, zoo.reference, scorers=SCORERS, cache=copy, progress=False,
                         reference_images=budget.images, reference_tolerance=budget.tolerance, threads=THREADS)
        wall = time.perf_counter() - start
        if failed(results):
            raise RuntimeError(f"{zoo.name}, budget {name}: models failed: {failed(results)}")
        out[name] = {"wall": wall, "rows": {
            row["name"]: (row["reference_images"], row["seconds"]["reference"],
                          {scorer: row["scores"][scorer]["ped"] for scorer in SCORERS})
            for row in results["models"]}}
        print(f"  {zoo.name} screen, budget {name}: {wall:.1f} s", file=sys.stderr, flush=True)
    return out


def draws(zoo, cache, count):
    """{budget name: [{"images": {model: n}, "ped": {model: {scorer: score}}}
    per draw seed]}, every draw's statistics computed from each model's
    features of every reference image, as the library would draw them with
    that seed, and its PED scores from ped_score (the plain scores do not
    depend on the reference)."""
    from ped_fast import ped_score
    from ped_fast.zoo import extract, stats_of

    cache = cache / "warm"
    target = extract(zoo.specs, zoo.target, cache=cache, progress=False, threads=THREADS)
    reference = {label: np.asarray(fs.features) for label, fs in
                 extract(zoo.specs, zoo.reference, cache=cache, progress=False, threads=THREADS).items()}

    def scored(label, rows):
        stats = stats_of(reference[label][rows])
        features, labels = np.array(target[label].features), target[label].labels
        return {scorer: float(ped_score(features, labels, scorer, reference=(stats.mean, stats.std)))
                for scorer in SCORERS}

    full = {label: scored(label, np.arange(len(features))) for label, features in reference.items()}
    out = {}
    for budget in zoo.budgets:
        runs = []
        for seed in range(1 if budget.images is None else count):
            run = {"images": {}, "ped": {}}
            for label, features in reference.items():
                rows = chosen_rows(features, budget, seed)
                run["images"][label] = len(rows)
                # Every image, in whatever order, gives the full reference's statistics.
                run["ped"][label] = full[label] if len(rows) == len(features) else scored(label, rows)
            runs.append(run)
        out[budget.name] = runs
    return out


def tails(zoo, cache):
    """{model: (D, median and largest per-dimension kurtosis of its features
    on the whole reference)}: "auto" bounds a std's relative standard error
    by sqrt((kurtosis - 1) / 4n), so its largest kurtosis k sets the images
    it needs, (k - 1) / (4 tolerance^2). Constant dimensions are left out,
    as the rule leaves them."""
    from ped_fast.zoo import extract

    out = {}
    for label, fs in extract(zoo.specs, zoo.reference, cache=cache / "warm", progress=False,
                             threads=THREADS).items():
        x = np.asarray(fs.features, dtype=np.float64)
        centred = x - x.mean(axis=0)
        variance = (centred ** 2).mean(axis=0)
        varying = variance > 0
        kurtosis = (centred[:, varying] ** 4).mean(axis=0) / variance[varying] ** 2
        out[label] = (x.shape[1], float(np.median(kurtosis)), float(kurtosis.max()))
    return out


def chosen_rows(features, budget, seed):
    """The reference rows a budget uses with draw seed `seed`, as
    ImageSet.subset / .shuffled and ReferenceStage draw them (seed 0 is the
    library's draw); "auto" stops at the first batch boundary where the
    library's own precision estimate (refstats._Precision) meets the
    tolerance after the minimum number of images."""
    from ped_fast.zoo.refstats import _AUTO_MINIMUM, _Precision

    total = features.shape[0]
    if budget.images is None:
        return np.arange(total)
    if budget.images != "auto":
        if budget.images >= total:
            return np.arange(total)
        return np.sort(np.random.default_rng(seed).choice(total, size=budget.images, replace=False))
    order = np.random.default_rng(seed).permutation(total)
    precision = _Precision()
    for end in range(BATCH, total + BATCH, BATCH):
        precision.update(features[order[end - BATCH:end]])
        if precision.count >= _AUTO_MINIMUM and precision.relative_error() <= budget.tolerance:
            break
    return order[:precision.count]


# ---------------------------------------------------------------- comparing

def compare(scores, full, truth):
    """How a budget's PED scores of one scorer ({model: score}) differ from
    the full reference's: the largest relative change, the largest change
    as a share of the zoo's spread of full-reference scores, weighted tau
    between the two rankings, the pairs of models they order differently,
    and weighted tau against the ground truth (None without one)."""
    from ped_fast.evaluate import weighted_tau

    names = sorted(full)
    a, b = np.array([scores[n] for n in names]), np.array([full[n] for n in names])
    spread = b.max() - b.min()
    swaps = sum(1 for i in range(len(names)) for j in range(i + 1, len(names))
                if np.sign(a[i] - a[j]) != np.sign(b[i] - b[j]))
    return {"relative": float(np.max(np.abs(a - b) / np.abs(b))),
            "of_spread": float(np.max(np.abs(a - b)) / spread) if spread > 0 else math.nan,
            "tau_full": float(weighted_tau(a, b)), "swaps": swaps,
            "tau_truth": float(weighted_tau(a, [truth[n] for n in names])) if truth else None}


def per_scorer(ped, scorer):
    return {model: scores[scorer] for model, scores in ped.items()}


def summarise(zoo, screened, drawn):
    """The figures of one zoo: per budget, the screen's (images used,
    reference seconds, comparisons) and the draws' spread."""
    full_screen = {scorer: per_scorer({m: r[2] for m, r in screened["all"]["rows"].items()}, scorer)
                   for scorer in SCORERS}
    full_drawn = {scorer: per_scorer(drawn["all"][0]["ped"], scorer) for scorer in SCORERS}
    full_seconds = sum(r[1] for r in screened["all"]["rows"].values())
    out = {}
    for budget in zoo.budgets:
        rows = screened[budget.name]["rows"]
        used = [r[0] for r in rows.values()]
        seconds = sum(r[1] for r in rows.values())
        runs = drawn[budget.name]
        entry = {"images": used, "reference_seconds": seconds, "saved": 1 - seconds / full_seconds,
                 "wall": screened[budget.name]["wall"],
                 "draw_images": [n for run in runs for n in run["images"].values()],
                 "screen": {}, "draws": {}}
        for scorer in SCORERS:
            entry["screen"][scorer] = compare(per_scorer({m: r[2] for m, r in rows.items()}, scorer),
                                              full_screen[scorer], zoo.truth)
            entry["draws"][scorer] = [compare(per_scorer(run["ped"], scorer), full_drawn[scorer], zoo.truth)
                                      for run in runs]
        out[budget.name] = entry
    again = screened[REPEAT]
    out[REPEAT] = {"images": [r[0] for r in again["rows"].values()], "wall": again["wall"],
                   "reference_seconds": sum(r[1] for r in again["rows"].values())}
    out[REPEAT]["saved"] = 1 - out[REPEAT]["reference_seconds"] / full_seconds
    return out


def check_draw_zero(zoo, screened, drawn):
    """Draw 0 is the library's own draw: same image counts as the screen's
    rows, and PED scores equal to rounding (the draws' features come from
    another pass, batched otherwise). Returns the largest relative score
    difference."""
    worst = 0.0
    for budget in zoo.budgets:
        run, rows = drawn[budget.name][0], screened[budget.name]["rows"]
        for model, (images, _, ped) in rows.items():
            if run["images"][model] != images:
                raise RuntimeError(f"{zoo.name}, budget {budget.name}, {model}: the screen used {images} reference "
                                   f"images, draw 0 {run['images'][model]}: the draws do not reproduce the library's")
            for scorer in SCORERS:
                worst = max(worst, abs(run["ped"][model][scorer] - ped[scorer]) / abs(ped[scorer]))
    if worst > 1e-4:
        raise RuntimeError(f"{zoo.name}: draw 0's PED scores differ from the screen's by up to {worst:.1e} (relative)")
    return worst


# ---------------------------------------------------------------- printing

def tables(zoo, summary, draws_count):
    """Markdown tables of one zoo's figures."""
    truth = zoo.truth is not None
    budgets = [name for name in summary if name not in ("all", REPEAT)]
    lines = [f"### {zoo.name}: {len(zoo.specs)} models, reference folder of {summary['all']['images'][0]} images",
             "", "Screens (seed 0, as screen() draws). images skipped: the share of the full pass's model-images "
             "not read; reference s: the rows' reference seconds summed over the models; saved: against the first "
             "full screen.", "",
             "| budget | images used (min-max) | images skipped | reference s | saved | screen wall s |",
             "|---|---|---|---|---|---|"]
    full_images = sum(summary["all"]["images"])
    for name, entry in summary.items():
        lines.append(f"| {name} | {min(entry['images'])}-{max(entry['images'])} | "
                     f"{100 * (1 - sum(entry['images']) / full_images):.0f}% | {entry['reference_seconds']:.1f} | "
                     f"{100 * entry['saved']:.0f}% | {entry['wall']:.1f} |")
    lines += ["", "The screens' PED scores against the full reference's: the largest relative change over the models, "
                  "the largest change as a share of the zoo's spread of full-reference scores, weighted tau between "
                  "the two rankings, pairs of models ordered differently" +
              (", weighted tau against fine-tuning accuracy" if truth else "") + ".", "",
              "| budget | scorer | max rel. change | max change / spread | wtau vs full | swapped pairs |" +
              (" wtau vs truth |" if truth else ""), "|---|---|---|---|---|---|" + ("---|" if truth else "")]
    for name in budgets:
        for scorer, c in summary[name]["screen"].items():
            lines.append(f"| {name} | {scorer} | {100 * c['relative']:.2f}% | {100 * c['of_spread']:.1f}% | "
                         f"{c['tau_full']:.3f} | {c['swaps']} |" + (f" {c['tau_truth']:.3f} |" if truth else ""))
    if truth:
        taus = ", ".join(f"{scorer} {summary['all']['screen'][scorer]['tau_truth']:.3f}" for scorer in SCORERS)
        lines += ["", f"With the full reference, weighted tau against fine-tuning accuracy: {taus}."]
    lines += ["", f"Draws: each budget drawn with seeds 0-{draws_count - 1} (median and worst over the draws; "
                  f"images: over the draws and models).", "",
              "| budget | images used (median, max) | scorer | max rel. change | max change / spread | "
              "wtau vs full (worst) | draws with a swap |" + (" wtau vs truth (lowest, highest) |" if truth else ""),
              "|---|---|---|---|---|---|---|" + ("---|" if truth else "")]
    for name in budgets:
        entry = summary[name]
        used = entry["draw_images"]
        for scorer, cs in entry["draws"].items():
            rel, spread = [c["relative"] for c in cs], [c["of_spread"] for c in cs]
            line = (f"| {name} | {np.median(used):.0f}, {max(used)} | {scorer} | {100 * np.median(rel):.2f}%, "
                    f"{100 * max(rel):.2f}% | {100 * np.median(spread):.1f}%, {100 * max(spread):.1f}% | "
                    f"{min(c['tau_full'] for c in cs):.3f} | {sum(c['swaps'] > 0 for c in cs)}/{len(cs)} |")
            if truth:
                taus = [c["tau_truth"] for c in cs]
                line += f" {min(taus):.3f}, {max(taus):.3f} |"
            lines.append(line)
    return lines


def tails_table(zoo, kurtosis):
    tolerances = sorted({b.tolerance for b in zoo.budgets if b.images == "auto"}, reverse=True)
    lines = ["", "Tails of each model's reference features: the per-dimension kurtosis (3 for a normal "
                 "distribution), and the images auto's rule needs for the largest one, (k - 1) / (4 tolerance^2).",
             "", "| model | D | kurtosis median | kurtosis max | " +
             " | ".join(f"images for auto {t:g}" for t in tolerances) + " |", "|---|---|---|---|" +
             "---|" * len(tolerances)]
    for label, (dim, median, largest) in kurtosis.items():
        need = " | ".join(f"{math.ceil((largest - 1) / (4 * t * t)):,}" for t in tolerances)
        lines.append(f"| {label} | {dim} | {median:.1f} | {largest:.1f} | {need} |")
    return lines


def machine():
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {datetime.date.today().isoformat()}"


def main(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run for developing this script")
    parser.add_argument("--draws", type=int, default=None, help="seeds per budget in the draws (default 10; quick 3)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ped_fast_bench_reference_budget",
                        help="folder for the demo zoo, the generated data and the caches (reused between runs)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--zoo", choices=("demo", "generated"), action="append",
                        help="measure only this zoo (repeatable; default: both)")
    args = parser.parse_args(argv)
    if args.draws is not None and args.draws < 1:
        parser.error(f"--draws must be a positive integer, got {args.draws}")
    count = args.draws or (3 if args.quick else 10)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)  # the draws' scoring, as extraction
    started = time.perf_counter()
    report = {"machine": machine(), "draws": count, "zoos": {}}
    print(f"Machine: {report['machine']}\n", flush=True)
    for name in args.zoo or ("demo", "generated"):
        zoo = (demo_zoo if name == "demo" else generated_zoo)(args.work, args.quick)
        cache = args.work / f"screen-cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)  # a cold reference pass for every budget
        screened = screens(zoo, cache)
        drawn = draws(zoo, cache, count)
        worst = check_draw_zero(zoo, screened, drawn)
        summary = summarise(zoo, screened, drawn)
        kurtosis = tails(zoo, cache)
        report["zoos"][name] = {"summary": summary, "kurtosis": kurtosis, "draw_zero_difference": worst,
                                "notes": zoo.notes}
        notes = "".join(f"; {note}" for note in zoo.notes)
        print("\n".join(tables(zoo, summary, count) + tails_table(zoo, kurtosis)), flush=True)
        print(f"\n(draw 0 reproduces the screens' PED scores to {worst:.1e}, relative{notes})\n", flush=True)
    print(f"total: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
