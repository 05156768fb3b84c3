"""ped-fast: screen a model zoo with PED and transferability scorers.

Each verb is a stage of the screen (`ped-fast VERB --help` for its options).
What they compute goes to the cache (--cache, $PED_FAST_CACHE or
~/.cache/ped_fast), so no work is done twice and a killed run resumes where
it stopped. See docs/screening.md.

exit status:
  0    done
  1    done, but some models failed (each is an error row; the others are
       reported)
  2    a bad argument, found before any work (one line naming it)
  3    the run failed on the file system or the machine (a full disk, a
       folder that cannot be written, a permission): one line naming the
       path and the cause
  4    an unexpected error: one line; the traceback is in OUT/ped-fast-error.log
       (or the cache folder) and on the screen with --verbose
  130  interrupted (Ctrl-C): finished work is in the cache; run the same
       command again to resume
"""
from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import torch

from . import __version__, _backends
from .evaluate import BOOTSTRAP, CONFIDENCE, check_bootstrap
from .scorers import available
from .zoo.errors import checking_inputs, is_input_error
from .zoo.finetune import Recipe
from .zoo.report import ROWS_FIT, TABLE_WIDTH

if TYPE_CHECKING:
    from .zoo.images import ImageSet
    from .zoo.ray_executor import RayExecutor

EXIT_FAILED_MODELS, EXIT_USAGE, EXIT_RUN, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
ERROR_LOG = "ped-fast-error.log"

_MODEL_FLAGS = ("comma-separated [LABEL:]NAME[=PATH] or [LABEL:]SOURCE:ID (hf-hub:, local-dir:, torchvision:, hf:), "
                "or a JSON file of them")
_SOURCES = ("an image folder (one subfolder per class), a CSV or JSON-lines manifest of path,label, or a Hugging "
            "Face dataset (a save_to_disk folder, parquet or arrow files)")


def _common(parser: argparse.ArgumentParser, *, cache: bool = True, extraction: bool = True, backend: bool = False,
            models: bool = True) -> None:
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
        group.add_argument("--no-ema", action="store_true",
                           help="load a training checkpoint's plain weights, not its EMA weights (timm's preference "
                                "when it holds both)")
    if extraction:
        group.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                           help="forward-pass precision (features are stored float32; default: fp32)")
        group.add_argument("--workers", type=int,
                           help="image-decoding worker processes (default: 0 on the CPU, up to 8 with a GPU)")
        group.add_argument("--models-per-pass", type=int,
                           help="models sharing one pass over the images (their weights are held together; default: "
                                "as many as fit in 1 GiB of weights on the CPU, 40%% of a GPU's memory)")
        group.add_argument("--threads", type=int,
                           help="torch threads during the forward passes (default: the cores this process may use "
                                "less the decoding workers)")
    _output_options(group)


def _reference_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-images", metavar="N|auto",
                        help="reference images per model: every one (default, the paper's setting), a seeded random "
                             "subset of N (the same for every model), or auto: stop once each dimension's mean and "
                             "std are known to --reference-tolerance")
    parser.add_argument("--reference-tolerance", type=float, default=0.01, metavar="T",
                        help="auto's relative standard error (default: %(default)s)")


def _column_options(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    """The columns of a --data, --reference or --test that is a dataset or
    a manifest (docs/screening.md §1.1)."""
    parser.add_argument("--image-column", metavar="NAME",
                        help="the images' column of a dataset (default: image, else its only Image column) or a "
                             "manifest (default: path)")
    if labels:
        parser.add_argument("--label-column", metavar="NAME",
                            help="the labels' column of a dataset (default: label, else its only ClassLabel column) "
                                 "or a manifest (default: label)")


def _bootstrap_options(group: argparse._ActionsContainer, seed_flags: Sequence[str]) -> None:
    """The bootstrap intervals of the ranking measures (docs/screening.md §5)."""
    group.add_argument("--bootstrap", type=int, default=BOOTSTRAP, metavar="B",
                       help="resamples of the models (and of their fine-tuning seeds) for the intervals; 0: none "
                            "(default: %(default)s)")
    group.add_argument("--confidence", type=float, default=CONFIDENCE, metavar="C",
                       help="the intervals' confidence level (default: %(default)s)")
    group.add_argument(*seed_flags, dest="bootstrap_seed", type=int, default=0, metavar="S",
                       help="the resampling's seed: the same seed gives the same intervals (default: %(default)s)")


def _output_options(group: argparse._ActionsContainer) -> None:
    group.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    group.add_argument("--verbose", action="store_true", help="print the traceback of an unexpected error")


class _Parser(argparse.ArgumentParser):
    """An argument error is two lines: a short usage line and the error
    (argparse prints the whole usage block first, burying the line that
    matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"usage: {self.prog} [options] (see {self.prog} --help)\n{self.prog}: error: {message}\n")


def _parser(prog: str) -> tuple[_Parser, dict[str, _Parser]]:
    parser = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="VERB", parser_class=_Parser)

    extract = verbs.add_parser("extract", help="features of an image folder from timm models (cached)")
    extract.add_argument("--models", required=True, metavar="SPECS", help=_MODEL_FLAGS)
    extract.add_argument("--data", required=True, metavar="DIR", help=f"the labelled images: {_SOURCES}")
    _column_options(extract)
    extract.add_argument("--out", metavar="DIR",
                         help="also write OUT/labels.npy and OUT/LABEL.npy (the --features layout), and "
                              "OUT/LABEL.logits.npy with --predictions exact")
    extract.add_argument("--predictions", choices=["compact", "exact"],
                         help="also keep each classifier head's predictions on the images (for leep and nce): "
                              "compact (at most 1 KiB per image) or exact (the N x K logits); default: none")
    _common(extract)

    stats = verbs.add_parser("reference-stats", help="streamed mean/std of each model's reference features")
    stats.add_argument("--models", required=True, metavar="SPECS", help=_MODEL_FLAGS)
    stats.add_argument("--reference", required=True, metavar="DIR",
                       help="reference images (labels ignored): an image folder (any layout), a CSV or JSON-lines "
                            "manifest, or a Hugging Face dataset")
    _column_options(stats, labels=False)
    stats.add_argument("--out", metavar="DIR", help="also write OUT/LABEL.reference_stats.npz (arrays mean, std)")
    _reference_budget(stats)
    _common(stats)

    screen = verbs.add_parser("screen", help="score every model plain and with PED, and write the report")
    screen.add_argument("--models", metavar="SPECS", help=_MODEL_FLAGS)
    screen.add_argument("--data", metavar="DIR", help=f"the target images: {_SOURCES}")
    _column_options(screen)
    screen.add_argument("--features", metavar="DIR",
                        help="instead of --models/--data: a folder with labels.npy, NAME.npy and optionally "
                             "NAME.reference.npy or NAME.reference_stats.npz")
    screen.add_argument("--tasks", metavar="FILE",
                        help="instead of --data/--features/--ground-truth: a JSON list of target tasks, each "
                             "{\"name\", \"data\" or \"features\": FOLDER, \"ground_truth\": FILE (optional)} "
                             "(paths relative to the file): screens the zoo on every task (each model built once per "
                             "pass, the reference statistics once), each report in OUT/NAME/ and the summary across "
                             "tasks in OUT/summary.{json,csv,md}")
    screen.add_argument("--reference", metavar="DIR|self",
                        help="reference images (an image folder, a manifest or a dataset; labels ignored), "
                             "or 'self' (rescale by the target features); with "
                             "--features, omit it to use each NAME's reference file")
    screen.add_argument("--scorers", default="sfda",
                        help=f"'all', or comma-separated among {', '.join(s.name for s in available())} (default: "
                             f"sfda); leep and nce read the models' predictions and have no PED score")
    screen.add_argument("--predictions", choices=["compact", "exact"], default="compact",
                        help="how the classifier heads' predictions are kept when a scorer reads them: compact (at "
                             "most 1 KiB per image; leep and nce; default) or exact (the N x K logits)")
    screen.add_argument("--reduce", metavar="pca:K",
                        help="project each model's features on their K principal axes before PED and scoring (the "
                             "remedy for saturated scores when D >= N); needs --reference self, or --features with "
                             "NAME.reference.npy")
    screen.add_argument("--combine", metavar="SPEC", action="append",
                        help="a zoo-level combination, minmax:TERM+TERM... (TERM: a screened scorer, or ped_SCORER "
                             "for its PED score): the mean of the terms min-max normalised across the zoo; repeatable")
    screen.add_argument("--ped-grid", metavar="GRID",
                        help="PED's sensitivity: 'NAME=V,V,...;NAME=V,...' over ped()'s settings (time_step, nsigma, "
                             "exit_ratio, max_steps, ...), e.g. 'nsigma=0.4,0.6,0.8;time_step=0.05,0.1': every model's "
                             "PED score at every combination, and with --ground-truth each scorer's weighted tau "
                             "across the grid")
    screen.add_argument("--ground-truth", metavar="FILE",
                        help="JSON {model: accuracy} or {model: [accuracy per fine-tuning seed]}: adds the ranking "
                             "measures with their bootstrap intervals")
    screen.add_argument("--out", metavar="DIR", default="ped_fast_results",
                        help="report folder: results.json, results.csv, ranking.png (default: ped_fast_results)")
    _reference_budget(screen)
    _common(screen, backend=True)
    report = screen.add_argument_group("report options")
    report.add_argument("--show", choices=["fit", "all"], default="fit",
                        help=f"the printed table: fit (default) keeps it within {TABLE_WIDTH} columns (the scores "
                             f"that rank first, at most {ROWS_FIT} models); all prints every model and column "
                             f"(results.csv always has them)")
    _bootstrap_options(report, seed_flags=("--bootstrap-seed",))
    cluster = screen.add_argument_group("executor options")
    cluster.add_argument("--executor", default="local", choices=["local", "ray"],
                         help="run the per-model work units here, one after another (local, default), or as Ray "
                              "tasks on a cluster (ray; needs pip install -e '.[ray]')")
    cluster.add_argument("--ray-address", metavar="ADDRESS",
                         help="Ray cluster to connect to (default: $RAY_ADDRESS when set, else a new local cluster)")
    cluster.add_argument("--ray-gpus-per-task", type=float, metavar="N",
                         help="GPUs each Ray task asks for (default: 1 when the cluster has GPUs and the task will "
                              "use one (--device not cpu), else 0)")
    cluster.add_argument("--ray-cpus-per-task", type=float, metavar="N",
                         help="CPUs each Ray task asks for; its image decoding uses N - 1 worker processes unless "
                              "--workers says otherwise (default: 1)")
    cluster.add_argument("--ray-retries", type=int, metavar="N",
                         help="how often a task is retried after a transient failure (out of memory, a lost "
                              "connection or file system) or a dead worker (default: 3)")

    evaluate = verbs.add_parser("evaluate", help="ranking measures of a finished screen")
    evaluate.add_argument("--results", required=True, metavar="FILE|DIR",
                          help="a screen's results.json, or the screen's --out folder holding it")
    evaluate.add_argument("--ground-truth", required=True, metavar="FILE",
                          help="JSON {model: accuracy} or {model: [accuracy per fine-tuning seed]}")
    evaluate.add_argument("--out", metavar="DIR",
                          help="also write the report with the measures and the accuracy plot here")
    _bootstrap_options(evaluate, seed_flags=("--seed", "--bootstrap-seed"))
    _output_options(evaluate.add_argument_group("common options"))

    summarize = verbs.add_parser("summarize", help="the summary across tasks of finished screens")
    summarize.add_argument("results", nargs="+", metavar="RESULTS",
                           help="a screen's results.json or --out folder, one per task, named by its folder "
                                "(OUT/NAME/results.json), or NAME=PATH")
    summarize.add_argument("--out", metavar="DIR", required=True,
                           help="where to write summary.json, summary.csv and the Markdown table "
                                "(summary.{json,csv,md})")
    _bootstrap_options(summarize, seed_flags=("--seed", "--bootstrap-seed"))
    _output_options(summarize.add_argument_group("common options"))

    finetune = verbs.add_parser("finetune", help="fine-tune each model: ground-truth accuracies")
    finetune.add_argument("--models", required=True, metavar="SPECS", help=_MODEL_FLAGS)
    finetune.add_argument("--data", required=True, metavar="DIR",
                          help=f"the training images: {_SOURCES}")
    finetune.add_argument("--test", required=True, metavar="DIR",
                          help="the test images, read as --data is (the same classes, other images)")
    _column_options(finetune)
    finetune.add_argument("--out", metavar="FILE", default="ground_truth.json",
                          help="ground-truth JSON to write (default: ground_truth.json)")
    # The defaults are the Recipe's, so the command and the API agree.
    finetune.add_argument("--epochs", type=int, default=Recipe.epochs,
                          help="passes over the training split (default: %(default)s)")
    finetune.add_argument("--lr", type=float, default=Recipe.lr, help="peak learning rate (default: %(default)s)")
    finetune.add_argument("--optimizer", default=Recipe.optimizer, choices=["adamw", "sgd"],
                          help="adamw (decoupled weight decay) or sgd (momentum 0.9, Nesterov) (default: "
                               "%(default)s)")
    finetune.add_argument("--seeds", metavar="S,S,...",
                          help="fine-tune each model once per seed; the ground truth then lists each seed's "
                               "accuracy (default: the one --seed)")
    finetune.add_argument("--augmentation", default=Recipe.augmentation, choices=["none", "light"],
                          help="none: the model's eval transform only (deterministic); light: random shifts of up to "
                               "1/8 of the image, seeded (default: %(default)s)")
    _common(finetune, extraction=False)
    finetune.set_defaults(batch_size=Recipe.batch_size)

    cache = verbs.add_parser("cache", help="see, check and clean the cache (ls, verify, prune)")
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    listing = actions.add_parser("ls", help="entries by kind and model: sizes and ages")
    listing.add_argument("--kind", help="only entries of this kind (features, reference, score, config, ...)")
    verify = actions.add_parser("verify", help="read every entry in full and check its checksums (exit 1 when "
                                               "any is damaged)")
    verify.add_argument("--kind", help="only entries of this kind")
    prune = actions.add_parser("prune", help="remove entries by model, kind or age (a removed entry is recomputed "
                                             "when needed)")
    prune.add_argument("--model", help="a row label or model name; shell wildcards allowed (e.g. 'resnet*')")
    prune.add_argument("--kind", help="only entries of this kind")
    prune.add_argument("--older-than", metavar="AGE", help="only entries created more than AGE ago: 30d, 12h, 90min")
    prune.add_argument("--damaged", action="store_true", help="only entries that verify finds damaged")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    for parser_ in (listing, verify, prune):
        group = parser_.add_argument_group("common options")
        group.add_argument("--cache", metavar="DIR",
                           help="cache folder (default: $PED_FAST_CACHE or ~/.cache/ped_fast)")
        _output_options(group)

    demo = verbs.add_parser("demo", help="screen a zoo trained on this machine, offline (cache: $PED_FAST_CACHE)")
    demo.add_argument("--out", metavar="DIR", default="ped_fast_demo",
                      help="report folder (default: ped_fast_demo)")
    demo.add_argument("--backend", default="auto", help="PED backend (default: auto, the fastest available)")
    demo.add_argument("--cache", metavar="DIR",
                      help="cache folder for the demo's zoo, data and features (default: $PED_FAST_CACHE or "
                           "~/.cache/ped_fast)")
    _output_options(demo)
    return parser, verbs.choices


def main(argv: Sequence[str] | None = None, prog: str = "ped-fast") -> int:
    """Run one verb; returns its exit status (see the module docstring),
    raising SystemExit for a bad argument (2) as argparse does."""
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
    except KeyboardInterrupt:
        print(f"\n{verb.prog}: interrupted; what was finished is kept in the cache ({_cache_folder(args)}): run "
              f"the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if is_input_error(error) and not _of_the_machine(error):
            verb.error(str(error))
        if isinstance(error, OSError):
            print(f"{verb.prog}: failed: {error}", file=sys.stderr)
            return EXIT_RUN
        log = _write_error_log(args, error)
        print(f"{verb.prog}: unexpected error: {type(error).__name__}: {error}"
              + (f" (traceback in {log}" + ("" if args.verbose else "; --verbose prints it") + ")" if log else ""),
              file=sys.stderr)
        if args.verbose:
            traceback.print_exception(error)
        return EXIT_UNEXPECTED


# What the file system or the machine refused: a failure of the run (exit
# 3), even when it is found by the checks before any work (a read-only
# --out), not a mistyped argument.
_MACHINE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO}


def _of_the_machine(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _MACHINE_ERRNOS


def _cache_folder(args: argparse.Namespace) -> Path:
    from .zoo.cache import default_root

    return Path(args.cache).expanduser().absolute() if getattr(args, "cache", None) else default_root()


def _write_error_log(args: argparse.Namespace, error: BaseException) -> Path | None:
    """The traceback in OUT/ped-fast-error.log (the verb's report folder, or
    the cache folder); None when neither can be written."""
    out = getattr(args, "out", None)
    folder = Path(out) if out and args.command in ("screen", "extract", "reference-stats", "evaluate", "demo",
                                                   "summarize") \
        else _cache_folder(args)
    path = folder / ERROR_LOG
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def _device(args: argparse.Namespace) -> torch.device:
    from .zoo.device import resolve_device

    if getattr(args, "device", None) is None:
        # The demo runs on the CPU wherever it is (its figures are the README's).
        return torch.device("cpu") if args.command == "demo" else resolve_device(None)
    try:
        return resolve_device(args.device)
    except ValueError:
        return torch.device("cpu")  # reported by the verb itself, naming --device


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return dict(pretrained=not args.no_pretrained, seed=args.seed, batch_size=args.batch_size, device=args.device,
                precision=args.precision, workers=args.workers, models_per_pass=args.models_per_pass,
                threads=args.threads, use_ema=not args.no_ema, progress=not args.quiet)


def _seeds(text: str | None) -> tuple[int, ...] | None:
    """--seeds "0,1,2": the fine-tuning seeds, or None (the one --seed)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None


def _budget(value: str | None) -> int | Literal["auto"] | None:
    """--reference-images: None (every image), "auto", or a count."""
    if value is None or value == "auto":
        return None if value is None else "auto"  # the literal, as screen's signature takes it
    try:
        return int(value)
    except ValueError:
        with checking_inputs():
            raise ValueError(f"--reference-images must be a number of images or 'auto', got {value!r}") from None


def _sources(args: argparse.Namespace, *sources: tuple[str, str, str | None, bool]) -> list[str | ImageSet | None]:
    """The verb's images (each (option, what, source, labelled)) as the API
    takes them: with --image-column or --label-column, the datasets and
    manifests among them read with those columns (images.image_set), the
    image folders left as paths, and an error when none is a dataset or
    manifest; without them, the paths themselves."""
    from .zoo.images import image_set, source_kind

    columns = {name: getattr(args, name, None) for name in ("image_column", "label_column")}
    columns = {name: value for name, value in columns.items() if value is not None}
    if not columns:
        return [source for _, _, source, _ in sources]
    with checking_inputs():
        read = [source not in (None, "self") and source_kind(source) != "folder" for _, _, source, _ in sources]
        if not any(read):
            given = " and ".join("--" + name.replace("_", "-") for name in columns)
            folders = ", ".join(f"{option} {source!r}" for option, _, source, _ in sources if source is not None)
            raise ValueError(f"{given} {'name columns' if len(columns) > 1 else 'names a column'} of a dataset or "
                             f"a manifest; {folders or 'no source'} {'is an image folder' if folders else 'was given'}")
        # `reading` implies a source (see `read`); the test says so to the type checker.
        return [image_set(source, what=what, labelled=labelled, **columns) if reading and source is not None
                else source for (_, what, source, labelled), reading in zip(sources, read)]


def _run_stage(args: argparse.Namespace, run: Callable[..., Mapping[str, Any]], folder: str | ImageSet | None,
               describe: Callable[[Any], str], export: Callable[[Any, str], object], written: Callable[[int], str],
               **options: Any) -> int:
    """extract and reference-stats: run the stage, one line per model, and
    export what finished to --out."""
    from .zoo.extract import ExtractionError
    from .zoo.report import check_output_folder

    if args.out:
        with checking_inputs():
            check_output_folder(args.out)
    try:
        results, status = run(args.models, folder, cache=args.cache, **options, **_settings(args)), 0
    except ExtractionError as error:
        results, status = error.results, EXIT_FAILED_MODELS
        for label, failure in error.errors.items():
            print(f"{label}: failed: {failure}", file=sys.stderr)
    for label, result in results.items():
        print(f"{label}: {describe(result)}"
              f"{', from the cache' if result.cached else f' in {result.seconds:.2f} s'} ({result.key})")
    if args.out and results:
        export(results, args.out)
        print(f"wrote {written(len(results))}")
    return status


def _run_extract(args: argparse.Namespace) -> int:
    from .zoo.extract import export_features, extract

    data, = _sources(args, ("--data", "data", args.data, True))
    return _run_stage(args, extract, data, lambda fs: f"{fs.features.shape[0]} x {fs.dim} features",
                      export_features, lambda n: f"{args.out}/labels.npy and {n} feature files",
                      predictions=args.predictions)


def _run_reference_stats(args: argparse.Namespace) -> int:
    from .zoo.refstats import export_stats, reference_stats

    reference, = _sources(args, ("--reference", "reference", args.reference, False))
    return _run_stage(args, reference_stats, reference,
                      lambda stats: f"mean and std of {stats.dim} dimensions over {stats.count} images",
                      export_stats, lambda n: f"{n} files {args.out}/LABEL.reference_stats.npz",
                      reference_images=_budget(args.reference_images), reference_tolerance=args.reference_tolerance)


def _run_screen(args: argparse.Namespace) -> int:
    from .zoo.report import FILES, format_grid, format_table
    from .zoo.screen import failed, screen

    if args.tasks is not None:
        return _run_screen_tasks(args)
    data, reference = _sources(args, ("--data", "data", args.data, True),
                               ("--reference", "reference", args.reference, False))
    results = screen(args.models, data, reference, scorers=args.scorers, ground_truth=args.ground_truth,
                     out=args.out, cache=args.cache, features=args.features, backend=args.backend,
                     executor=_executor(args), reduce=args.reduce, combine=args.combine,
                     predictions=args.predictions, reference_images=_budget(args.reference_images),
                     reference_tolerance=args.reference_tolerance, bootstrap=args.bootstrap,
                     confidence=args.confidence, bootstrap_seed=args.bootstrap_seed, ped_grid=args.ped_grid,
                     **_settings(args))
    print(format_table(results, width=None if args.show == "all" else TABLE_WIDTH))
    if "ped_grid" in results:
        print("\n" + format_grid(results))
    print(f"\nwrote the report ({', '.join(FILES)}) to {args.out}")
    bad = failed(results)
    if bad:
        print(f"{len(bad)} of {len(results['models'])} models failed: {', '.join(bad)}", file=sys.stderr)
    return EXIT_FAILED_MODELS if bad else 0


def _run_screen_tasks(args: argparse.Namespace) -> int:
    """screen --tasks: every task's screen, then the summary across them."""
    from .zoo.tasks import SUMMARY_FILES, failed_tasks, format_summary, screen_tasks

    with checking_inputs():
        given = [option for option in ("data", "features", "ground_truth", "image_column", "label_column")
                 if getattr(args, option, None) is not None]
        if given:
            raise ValueError(f"--tasks names each task's data, features and ground truth: "
                             f"{', '.join('--' + o.replace('_', '-') for o in given)} cannot be given with it")
    screened = screen_tasks(args.models, args.tasks, args.reference, scorers=args.scorers, out=args.out,
                            cache=args.cache, backend=args.backend, executor=_executor(args), reduce=args.reduce,
                            combine=args.combine, predictions=args.predictions,
                            reference_images=_budget(args.reference_images),
                            reference_tolerance=args.reference_tolerance, bootstrap=args.bootstrap,
                            confidence=args.confidence, bootstrap_seed=args.bootstrap_seed, ped_grid=args.ped_grid,
                            **_settings(args))
    print(format_summary(screened["summary"]))
    print(f"\nwrote each task's report to {args.out}/TASK/ and the summary ({', '.join(SUMMARY_FILES)}) to "
          f"{args.out}")
    bad = failed_tasks(screened)
    for task, models in bad.items():
        print(f"task {task}: {len(models)} model(s) failed: {', '.join(models)}", file=sys.stderr)
    return EXIT_FAILED_MODELS if bad else 0


def _run_summarize(args: argparse.Namespace) -> int:
    """summarize: the summary across tasks of finished screens."""
    from .zoo.tasks import SUMMARY_FILES, format_summary, summarize

    # NAME=PATH names a task; a path that exists is a path even with an "=".
    screens = [item if Path(item).exists() or "=" not in item else tuple(item.split("=", 1))
               for item in args.results]
    summary = summarize(screens, args.out, bootstrap=args.bootstrap, confidence=args.confidence,
                        seed=args.bootstrap_seed)
    print(format_summary(summary))
    print(f"\nwrote the summary ({', '.join(SUMMARY_FILES)}) to {args.out}")
    return 0


_RAY_OPTIONS = {"ray_address": "address", "ray_gpus_per_task": "gpus_per_task", "ray_cpus_per_task": "cpus_per_task",
                "ray_retries": "max_retries"}


def _executor(args: argparse.Namespace) -> str | RayExecutor:
    given = {option: getattr(args, option) for option in _RAY_OPTIONS if getattr(args, option) is not None}
    with checking_inputs():
        if args.executor == "local":
            if given:
                raise ValueError(f"{', '.join('--' + o.replace('_', '-') for o in given)} need --executor ray")
            return "local"
        from .zoo.ray_executor import RayExecutor  # imports Ray only now: it is an optional extra

        try:
            return RayExecutor(progress=not args.quiet, **{_RAY_OPTIONS[o]: value for o, value in given.items()})
        except ImportError as error:
            raise ValueError(f"--executor ray: {error}") from None


def _run_evaluate(args: argparse.Namespace) -> int:
    from .zoo.report import (check_output_folder, evaluation, format_evaluation, json_safe, load_ground_truth,
                             recorded_ground_truth, write_report)
    from .zoo.tasks import read_results

    with checking_inputs():
        check_bootstrap(args.bootstrap, args.confidence, args.bootstrap_seed)
        results = read_results(args.results, "--results")
        truth = load_ground_truth(args.ground_truth)
        if args.out:
            check_output_folder(args.out)
        results["evaluation"] = json_safe(evaluation(results, truth, bootstrap=args.bootstrap,
                                                     confidence=args.confidence, seed=args.bootstrap_seed))
    results["ground_truth"] = recorded_ground_truth(truth, [row["name"] for row in results["models"]
                                                            if not row["error"]])
    print(format_evaluation(results["evaluation"]))
    if args.out:
        write_report(results, args.out)
        print(f"\nwrote the report with these measures to {args.out}")
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from .zoo.finetune import FinetuneFailed, Recipe, finetune_zoo

    with checking_inputs():
        recipe = Recipe(optimizer=args.optimizer, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                        augmentation=args.augmentation)
        seeds = _seeds(args.seeds)
    train, test = _sources(args, ("--data", "train_dir", args.data, True), ("--test", "test_dir", args.test, True))
    accuracies: Mapping[str, float]
    try:
        accuracies = finetune_zoo(args.models, train, test, out=args.out, recipe=recipe, seed=args.seed,
                                  seeds=seeds, pretrained=not args.no_pretrained, device=args.device,
                                  cache=args.cache, use_ema=not args.no_ema, progress=not args.quiet)
    except FinetuneFailed as error:
        accuracies, status = error.accuracies, 1
        print(str(error), file=sys.stderr)
    else:
        status = 0
    for label, value in accuracies.items():
        print(f"{label}: accuracy {value:.4f}")
    print(f"wrote {args.out}")
    return status


def _run_cache(args: argparse.Namespace) -> int:
    from .zoo import cache as cache_module

    cache = cache_module.Cache(args.cache)
    with checking_inputs():
        if not cache.root.is_dir():
            raise FileNotFoundError(f"--cache {str(cache.root)!r} does not exist (nothing is cached there yet)")
        older_than = cache_module.parse_age(args.older_than) if getattr(args, "older_than", None) else None
    if args.action == "ls":
        print(cache_module.format_entries(cache.entries(args.kind)))
        return 0
    if args.action == "verify":
        problems = cache.verify(args.kind)
        print(cache_module.format_problems(problems))
        return EXIT_FAILED_MODELS if problems else 0
    if not (args.model or args.kind or older_than is not None or args.damaged):
        with checking_inputs():
            raise ValueError("prune needs at least one of --model, --kind, --older-than or --damaged (to empty the "
                             f"cache, remove the folder {str(cache.root)!r})")
    pruned = cache.prune(model=args.model, kind=args.kind, older_than=older_than, damaged=args.damaged,
                         dry_run=args.dry_run)
    print(cache_module.format_pruned(pruned, dry_run=args.dry_run))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .zoo.demo import run_demo

    return run_demo(args.out, cache=args.cache, device="cpu", backend=args.backend, progress=not args.quiet)


_RUN: dict[str, Callable[[argparse.Namespace], int]] = {
    "extract": _run_extract, "reference-stats": _run_reference_stats, "screen": _run_screen, "evaluate": _run_evaluate,
    "summarize": _run_summarize, "finetune": _run_finetune, "cache": _run_cache, "demo": _run_demo}


if __name__ == "__main__":
    sys.exit(main(prog="python -m ped_fast"))
