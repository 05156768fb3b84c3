"""Transferability scorers that PED plugs into (docs/spec.md §2).

Each is f(features, labels, ...) -> float: features N x D (numpy or torch,
any device, float32 or float64; never modified), labels N integers. Scores
are computed in float64 unless dtype=torch.float32 is passed. backend=
("auto", "reference", "cpu", ...) picks the backend that runs a scorer's
per-class operations, checked as ped() checks it.
"""
from .gbc import gbc
from .logme import logme
from .nleep import nleep
from .sfda import sfda

SCORERS = {"sfda": sfda, "logme": logme, "nleep": nleep, "gbc": gbc}

__all__ = ["sfda", "logme", "nleep", "gbc", "SCORERS"]
