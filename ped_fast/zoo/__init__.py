"""Model-zoo screening: timm feature extraction, streamed reference
statistics, a resumable cache, scoring every model plain and with PED, and
the report (docs/screening.md).

Stages, each usable alone: models (specs, building, weights) -> extract
(images -> features) -> reference (streamed mean/std) -> score (one model ->
one row) -> report (JSON, CSV, plot); screen() composes them over one cache.
"""
from .cache import Cache, default_root
from .extract import ExtractionError, FeatureSet, export_features, extract
from .images import ImageSet, image_files, image_folder
from .models import LoadedModel, ModelSpec, load_model, parse_models, parse_spec, weights_identity
from .refstats import ReferenceStats, RunningMoments, export_stats, load_stats_file, reference_stats, stats_of
from .report import format_table, load_ground_truth, write_report
from .report import evaluation as evaluate_results
from .scoring import score_features
from .screen import LocalExecutor, ModelTask, failed, screen, screen_model

__all__ = [
    "screen",
    "failed",
    "extract",
    "export_features",
    "reference_stats",
    "export_stats",
    "evaluate_results",
    "score_features",
    "write_report",
    "format_table",
    "load_ground_truth",
    "Cache",
    "default_root",
    "FeatureSet",
    "ReferenceStats",
    "RunningMoments",
    "stats_of",
    "load_stats_file",
    "ExtractionError",
    "ImageSet",
    "image_folder",
    "image_files",
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
