"""ped-fast: screen a model zoo with PED and transferability scorers.

Each verb is a stage of the screen (`ped-fast VERB --help` for its options).
What they compute goes to the cache (--cache, $PED_FAST_CACHE or
~/.cache/ped_fast), so no work is done twice and a killed run resumes where
it stopped. See docs/screening.md.
"""
import argparse
import json
import os
import sys

import torch

from . import _backends
from .scorers import available
from .zoo.finetune import Recipe

_MODEL_FLAGS = "comma-separated NAME, NAME=PATH or LABEL:NAME[=PATH], or a JSON file of them"


def _common(parser, *, cache=True, extraction=True, backend=False, models=True):
    """The options shared by the verbs (each verb takes those it uses)."""
    group = parser.add_argument_group("common options")
    if cache:
        group.add_argument("--cache", metavar="DIR",
                           help="cache folder (default: $PED_FAST_CACHE or ~/.cache/ped_fast)")
    group.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    if backend:
        group.add_argument("--backend", default="auto", help="PED backend (default: auto, the fastest available)")
    if models:
        group.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
        group.add_argument("--no-pretrained", action="store_true",
                           help="build plain NAME specs with seeded random weights (tests, offline trials)")
        group.add_argument("--seed", type=int, default=0, help="seed of random weights (default: 0)")
    if extraction:
        group.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                           help="forward-pass precision (features are stored float32; default: fp32)")
        group.add_argument("--workers", type=int,
                           help="image-decoding worker processes (default: 0 on the CPU, up to 8 with a GPU)")
        group.add_argument("--models-per-pass", type=int, default=8,
                           help="models sharing one pass over the images (their weights are held together; "
                                "default: 8)")
    group.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def _parser(prog):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    verbs = parser.add_subparsers(dest="command", required=True, metavar="VERB")

    extract = verbs.add_parser("extract", help="features of an image folder from timm models (cached)")
    extract.add_argument("--models", required=True, metavar="SPECS", help=_MODEL_FLAGS)
    extract.add_argument("--data", required=True, metavar="DIR", help="image folder, one subfolder per class")
    extract.add_argument("--out", metavar="DIR",
                         help="also write OUT/labels.npy and OUT/LABEL.npy (the --features layout)")
    _common(extract)

    stats = verbs.add_parser("reference-stats", help="streamed mean/std of each model's reference features")
    stats.add_argument("--models", required=True, metavar="SPECS", help=_MODEL_FLAGS)
    stats.add_argument("--reference", required=True, metavar="DIR",
                       help="reference image folder (any layout; labels ignored)")
    stats.add_argument("--out", metavar="DIR", help="also write OUT/LABEL.reference_stats.npz (arrays mean, std)")
    _common(stats)

    screen = verbs.add_parser("screen", help="score every model plain and with PED, and write the report")
    screen.add_argument("--models", metavar="SPECS", help=_MODEL_FLAGS)
    screen.add_argument("--data", metavar="DIR", help="target image folder, one subfolder per class")
    screen.add_argument("--features", metavar="DIR",
                        help="instead of --models/--data: a folder with labels.npy, NAME.npy and optionally "
                             "NAME.reference.npy or NAME.reference_stats.npz")
    screen.add_argument("--reference", metavar="DIR|self",
                        help="reference image folder, or 'self' (rescale by the target features); with "
                             "--features, omit it to use each NAME's reference file")
    screen.add_argument("--scorers", default="sfda",
                        help=f"'all', or comma-separated among {', '.join(s.name for s in available())} (default: "
                             f"sfda); leep and nce read the models' logits and have no PED score")
    screen.add_argument("--reduce", metavar="pca:K",
                        help="project each model's features on their K principal axes before PED and scoring (the "
                             "remedy for saturated scores when D >= N); needs --reference self, or --features with "
                             "NAME.reference.npy")
    screen.add_argument("--combine", metavar="SPEC", action="append",
                        help="a zoo-level combination, minmax:TERM+TERM... (TERM: a screened scorer, or ped_SCORER "
                             "for its PED score): the mean of the terms min-max normalised across the zoo; repeatable")
    screen.add_argument("--ground-truth", metavar="FILE", help="JSON {model: accuracy}: adds the ranking measures")
    screen.add_argument("--out", metavar="DIR", default="ped_fast_results",
                        help="report folder: results.json, results.csv, ranking.png (default: ped_fast_results)")
    _common(screen, backend=True)
    cluster = screen.add_argument_group("executor options")
    cluster.add_argument("--executor", default="local", choices=["local", "ray"],
                         help="run the per-model work units here, one after another (local, default), or as Ray "
                              "tasks on a cluster (ray; needs pip install -e '.[ray]')")
    cluster.add_argument("--ray-address", metavar="ADDRESS",
                         help="Ray cluster to connect to (default: $RAY_ADDRESS when set, else a new local cluster)")
    cluster.add_argument("--ray-gpus-per-task", type=float, metavar="N",
                         help="GPUs each Ray task asks for (default: 1 when the cluster has GPUs, else 0)")

    evaluate = verbs.add_parser("evaluate", help="ranking measures of a finished screen")
    evaluate.add_argument("--results", required=True, metavar="FILE", help="a screen's results.json")
    evaluate.add_argument("--ground-truth", required=True, metavar="FILE", help="JSON {model: accuracy}")
    evaluate.add_argument("--out", metavar="DIR",
                          help="also write the report with the measures and the accuracy plot here")

    finetune = verbs.add_parser("finetune", help="fine-tune each model: ground-truth accuracies")
    finetune.add_argument("--models", required=True, metavar="SPECS", help=_MODEL_FLAGS)
    finetune.add_argument("--data", required=True, metavar="DIR",
                          help="training image folder, one subfolder per class")
    finetune.add_argument("--test", required=True, metavar="DIR",
                          help="test image folder (the same classes, other images)")
    finetune.add_argument("--out", metavar="FILE", default="ground_truth.json",
                          help="ground-truth JSON to write (default: ground_truth.json)")
    # The defaults are the Recipe's, so the command and the API agree.
    finetune.add_argument("--epochs", type=int, default=Recipe.epochs,
                          help="passes over the training split (default: %(default)s)")
    finetune.add_argument("--lr", type=float, default=Recipe.lr, help="peak learning rate (default: %(default)s)")
    finetune.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    finetune.add_argument("--augmentation", default="none", choices=["none", "light"])
    _common(finetune, cache=False, extraction=False)
    finetune.set_defaults(batch_size=Recipe.batch_size)

    demo = verbs.add_parser("demo", help="screen a zoo trained on this machine, offline (cache: $PED_FAST_CACHE)")
    demo.add_argument("--out", metavar="DIR", default="ped_fast_demo",
                      help="report folder (default: ped_fast_demo)")
    demo.add_argument("--backend", default="auto", help="PED backend (default: auto, the fastest available)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return parser, verbs.choices


def main(argv=None, prog="ped-fast"):
    parser, verbs = _parser(prog)
    args = parser.parse_args(argv)
    verb = verbs[args.command]
    # A bad path, spec, backend or file is the caller's mistake: one line
    # naming it (exit status 2), not a traceback from deep in the run.
    if hasattr(args, "backend"):
        try:
            _backends.resolve(args.backend, _device(args))
        except (ValueError, RuntimeError) as error:
            verb.error(f"--backend {args.backend}: {error}")
    try:
        return _RUN[args.command](args)
    except (ValueError, OSError) as error:
        verb.error(str(error))


def _device(args):
    from .zoo.extract import resolve_device

    if getattr(args, "device", None) is None:
        # The demo runs on the CPU wherever it is (its figures are the README's).
        return torch.device("cpu") if args.command == "demo" else resolve_device(None)
    try:
        return resolve_device(args.device)
    except ValueError:
        return torch.device("cpu")  # reported by the verb itself, naming --device


def _settings(args):
    return dict(pretrained=not args.no_pretrained, seed=args.seed, batch_size=args.batch_size, device=args.device,
                precision=args.precision, workers=args.workers, models_per_pass=args.models_per_pass,
                progress=not args.quiet)


def _failures(error):
    for label, failure in error.errors.items():
        print(f"{label}: failed: {failure}", file=sys.stderr)
    return 1


def _run_extract(args):
    from .zoo.extract import ExtractionError, export_features, extract

    try:
        results = extract(args.models, args.data, cache=args.cache, **_settings(args))
    except ExtractionError as error:
        results, status = error.results, _failures(error)
    else:
        status = 0
    for label, fs in results.items():
        print(f"{label}: {fs.features.shape[0]} x {fs.dim} features"
              f"{', from the cache' if fs.cached else f' in {fs.seconds:.2f} s'} ({fs.key})")
    if args.out and results:
        export_features(results, args.out)
        print(f"wrote {args.out}/labels.npy and {len(results)} feature files")
    return status


def _run_reference_stats(args):
    from .zoo.extract import ExtractionError
    from .zoo.refstats import export_stats, reference_stats

    try:
        results = reference_stats(args.models, args.reference, cache=args.cache, **_settings(args))
    except ExtractionError as error:
        results, status = error.results, _failures(error)
    else:
        status = 0
    for label, stats in results.items():
        print(f"{label}: mean and std of {stats.dim} dimensions over {stats.count} images"
              f"{', from the cache' if stats.cached else f' in {stats.seconds:.2f} s'} ({stats.key})")
    if args.out and results:
        export_stats(results, args.out)
        print(f"wrote {len(results)} files {args.out}/LABEL.reference_stats.npz")
    return status


def _run_screen(args):
    from .zoo.report import FILES, format_table
    from .zoo.screen import failed, screen

    settings = _settings(args)
    results = screen(args.models, args.data, args.reference, scorers=args.scorers, ground_truth=args.ground_truth,
                     out=args.out, cache=args.cache, features=args.features, backend=args.backend,
                     executor=_executor(args), reduce=args.reduce, combine=args.combine, **settings)
    print(format_table(results))
    print(f"\nwrote {', '.join(FILES)} to {args.out}")
    bad = failed(results)
    if bad:
        print(f"{len(bad)} of {len(results['models'])} models failed: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


def _executor(args):
    if args.executor == "local":
        if args.ray_address is not None or args.ray_gpus_per_task is not None:
            raise ValueError("--ray-address and --ray-gpus-per-task need --executor ray")
        return "local"
    from .zoo.ray_executor import RayExecutor  # imports Ray only now: it is an optional extra

    try:
        return RayExecutor(address=args.ray_address, gpus_per_task=args.ray_gpus_per_task, progress=not args.quiet)
    except ImportError as error:
        raise ValueError(f"--executor ray: {error}") from None


def _run_evaluate(args):
    from .zoo.report import evaluation, format_evaluation, load_ground_truth, write_report

    if not os.path.isfile(args.results):
        raise FileNotFoundError(f"--results {args.results!r} does not exist")
    try:
        with open(args.results) as f:
            results = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"--results {args.results!r} is not valid JSON: {error}") from None
    if not isinstance(results, dict) or "models" not in results or "scorers" not in results:
        raise ValueError(f"--results {args.results!r} is not a screen's results.json (no 'models' and 'scorers')")
    truth = load_ground_truth(args.ground_truth)
    results["evaluation"] = evaluation(results, truth)
    results["ground_truth"] = {row["name"]: truth[row["name"]] for row in results["models"] if not row["error"]}
    print(format_evaluation(results["evaluation"]))
    if args.out:
        write_report(results, args.out)
        print(f"\nwrote the report with these measures to {args.out}")
    return 0


def _run_finetune(args):
    from .zoo.finetune import FinetuneFailed, Recipe, finetune_zoo

    recipe = Recipe(optimizer=args.optimizer, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                    augmentation=args.augmentation)
    try:
        accuracies = finetune_zoo(args.models, args.data, args.test, out=args.out, recipe=recipe, seed=args.seed,
                                  pretrained=not args.no_pretrained, device=args.device, progress=not args.quiet)
    except FinetuneFailed as error:
        accuracies, status = error.accuracies, 1
        print(str(error), file=sys.stderr)
    else:
        status = 0
    for label, value in accuracies.items():
        print(f"{label}: accuracy {value:.4f}")
    print(f"wrote {args.out}")
    return status


def _run_demo(args):
    from .zoo.demo import run_demo

    return run_demo(args.out, device="cpu", backend=args.backend, progress=not args.quiet)


_RUN = {"extract": _run_extract, "reference-stats": _run_reference_stats, "screen": _run_screen,
        "evaluate": _run_evaluate, "finetune": _run_finetune, "demo": _run_demo}


if __name__ == "__main__":
    sys.exit(main(prog="python -m ped_fast"))
