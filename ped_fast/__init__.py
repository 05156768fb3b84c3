"""ped_fast: rank pre-trained models for a downstream task with PED
(Li et al., "Exploring Model Transferability through the Lens of Potential
Energy", ICCV 2023), on fused CPU and GPU kernels."""
from . import ops
from ._backends import BackendStatus, available_backends
from .ped import PEDResult, ped

__all__ = ["ped", "PEDResult", "available_backends", "BackendStatus", "ops"]
__version__ = "0.1.0"
