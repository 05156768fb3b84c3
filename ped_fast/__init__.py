"""ped_fast: rank pre-trained models for a downstream task with PED
(Li et al., "Exploring Model Transferability through the Lens of Potential
Energy", ICCV 2023), on fused CPU and GPU kernels."""
from . import evaluate, ops, scorers
from ._backends import BackendStatus, available_backends
from .ped import PEDResult, ped
from .score import PEDScore, ped_score, ped_scores, ped_sweep

__all__ = [
    "ped",
    "PEDResult",
    "ped_score",
    "ped_scores",
    "ped_sweep",
    "PEDScore",
    "available_backends",
    "BackendStatus",
    "ops",
    "scorers",
    "evaluate",
]
__version__ = "0.1.0"
