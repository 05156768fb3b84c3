"""``ped-fast demo``: the whole screening pipeline, offline, on a real zoo.

The zoo, its data and its ground truth come from ped_fast.zoo.demo_zoo:
checkpoints of several timm architecture families, trained on this machine
on source tasks other than the target task, and fine-tuned on the target's
training split for the ground truth (all cached, so only the first run
trains). The demo screens them like any zoo: every scorer, plain and with
PED, then says how well each ranked the zoo, whatever the outcome, and
which differences eight models can resolve.

Its numbers are the same on every x86-64 machine with the same library
versions: the zoo is trained with pinned kernels (demo_zoo), and the
screening extracts features with EXTRACTION_THREADS threads whatever the
machine's cores (another thread count rounds the features differently,
by about 1e-6).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .cache import Cache
from .report import FILES, format_table
from .scoring import display_name
from .screen import failed, screen

SCORERS = ("sfda", "logme", "nleep", "gbc")
EXTRACTION_THREADS = 1


def run_demo(out: str | os.PathLike[str] = "ped_fast_demo", *, cache: Cache | str | os.PathLike[str] | None = None, device: str | torch.device | None = None,
             backend: str = "auto", progress: bool = True, write: Callable[[str], object] = print) -> int:
    """Build (or reuse) the demo zoo, screen it into `out`, print the table
    and the verdict; 0 when every model was scored, else 1."""
    from .demo_zoo import DemoConfig, build_demo

    start = time.perf_counter()
    cache = Cache.of(cache)
    zoo = build_demo(cache.root, progress=progress)
    results = screen(zoo.specs, zoo.target_train, zoo.reference, scorers=SCORERS, ground_truth=zoo.ground_truth,
                     out=out, cache=cache, device=device, backend=backend, progress=progress,
                     threads=EXTRACTION_THREADS)
    elapsed = time.perf_counter() - start
    write(f"Screening {len(zoo.specs)} checkpoints trained on this machine (source tasks other than the target) "
          f"on {results['data']['images']} target images of {len(results['data']['classes'])} classes; reference "
          f"set: {results['reference']['images']} images; ground truth: each checkpoint fine-tuned on the target "
          f"training split with {len(DemoConfig().finetune_seeds)} seeds and tested on a disjoint split")
    write("")
    write(format_table(results))
    write("")
    for line in verdict(results):
        write(line)
    trained = f"; trained {len(zoo.trained)} checkpoints" if zoo.trained else ""
    tuned = f", {len(zoo.finetuned)} fine-tuning runs" if zoo.finetuned else ""
    write(f"\nwrote {', '.join(FILES)} to {out} in {elapsed:.0f} s{trained}{tuned} (cache: {cache.root})")
    return 1 if failed(results) else 0


def verdict(results: Mapping[str, Any]) -> list[str]:
    """One line per scorer: did PED rank the zoo better or worse than the
    plain scorer (weighted tau), and is that difference resolved (its
    paired bootstrap interval excludes 0); then the best ranking overall,
    and how many other rankings' intervals reach its weighted tau."""
    lines: list[str] = []
    best: tuple[str, float] | None = None
    ranked: dict[str, Mapping[str, Any]] = {}
    for scorer, kinds in results.get("evaluation", {}).items():
        plain, moved = kinds["baseline"]["weighted_tau"], kinds["ped"]["weighted_tau"]
        name = display_name(scorer, "baseline")
        if not _finite(plain) or not _finite(moved):
            lines.append(f"{name}: weighted tau undefined (constant scores), no comparison")
            continue
        change = "better than" if moved > plain else "worse than" if moved < plain else "the same as"
        lines.append(f"{display_name(scorer, 'ped')} ranked the zoo {change} {name}: weighted tau {moved:.3f} "
                     f"vs {plain:.3f}{_resolution(kinds)}")
        for kind, tau in (("baseline", plain), ("ped", moved)):
            ranked[display_name(scorer, kind)] = kinds[kind]
            if best is None or tau > best[1]:
                best = (display_name(scorer, kind), tau)
    if best is not None:
        lines.append(f"best ranking of this zoo: {best[0]} (weighted tau {best[1]:.3f}; 1 = the fine-tuning order)")
        reach = [name for name, measures in ranked.items()
                 if name != best[0] and _interval(measures, "weighted_tau")[1] >= best[1]]
        if reach:
            lines.append(f"  but the {_level(ranked[best[0]])} intervals of {len(reach)} of the other "
                         f"{len(ranked) - 1} rankings reach {best[1]:.3f}: these "
                         f"{sum(not row['error'] for row in results['models'])} models do not single it out")
    return lines


def _resolution(kinds: Mapping[str, Any]) -> str:
    """PED against plain (the paired bootstrap of evaluation's
    "ped_vs_baseline"), in words; "" without a comparison."""
    versus = kinds.get("ped_vs_baseline") or {}
    interval = versus.get("delta_weighted_tau")
    if interval is None or versus.get("saturated"):
        return ""
    resolved = "resolved" if interval[0] > 0 or interval[1] < 0 else "not resolved"
    return (f"; {resolved} (difference {versus['delta']:+.3f}, {_level(kinds['ped'])} interval "
            f"[{interval[0]:+.2f},{interval[1]:+.2f}])")


def _interval(measures: Mapping[str, Any], name: str) -> Sequence[float]:
    """The bootstrap interval of one measure, or (-inf, -inf) without one."""
    interval = (measures.get("interval") or {}).get(name)
    return (-math.inf, -math.inf) if interval is None else interval


def _level(measures: Mapping[str, Any]) -> str:
    """The confidence of the measures' intervals, as "95%"."""
    return f"{measures['bootstrap']['confidence']:.0%}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
