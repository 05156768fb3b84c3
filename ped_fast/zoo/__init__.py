"""Model-zoo screening: timm feature extraction, streamed reference
statistics, a resumable cache, scoring every model plain and with PED, and
the report (docs/screening.md).

Stages, each usable alone: models (specs, building, weights) -> extract
(images -> features, and predictions when a scorer reads them) -> refstats
(streamed mean/std) -> scoring (one model -> one row) -> report (JSON, CSV,
plot); screen() composes them over one cache, screen_tasks() over several
target tasks with a summary across them.
"""
from .cache import Cache, default_root
from .extract import ExtractionError, FeatureSet, export_features, extract
from .images import ImageSet, image_files, image_folder, image_set, source_kind
from .models import LoadedModel, Model, ModelSpec, load_model, parse_models, parse_spec, weights_identity
from .predictions import Predictions
from .refstats import ReferenceStats, RunningMoments, export_stats, load_stats_file, reference_stats, stats_of
from .report import evaluation, format_table, load_ground_truth, write_report
from .scoring import score_features
from .screen import LocalExecutor, ModelTask, failed, screen, screen_model
from .tasks import Task, format_summary, load_tasks, screen_tasks, summarize

__all__ = [
    "screen",
    "screen_tasks",
    "summarize",
    "format_summary",
    "load_tasks",
    "Task",
    "failed",
    "extract",
    "export_features",
    "reference_stats",
    "export_stats",
    "evaluation",
    "score_features",
    "write_report",
    "format_table",
    "load_ground_truth",
    "Cache",
    "default_root",
    "FeatureSet",
    "Predictions",
    "ReferenceStats",
    "RunningMoments",
    "stats_of",
    "load_stats_file",
    "ExtractionError",
    "ImageSet",
    "image_folder",
    "image_files",
    "image_set",
    "source_kind",
    "Model",
    "ModelSpec",
    "LoadedModel",
    "parse_spec",
    "parse_models",
    "load_model",
    "weights_identity",
    "LocalExecutor",
    "ModelTask",
    "screen_model",
]
