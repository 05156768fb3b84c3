"""PED's sensitivity grid (issue 16 point 5): what ped_sweep() costs for a
20-point grid (nsigma x time_step, 5 x 4) with SFDA at SUN397 shape
(N=19850, D=2048, C=397, float64, CPU), against one PED+SFDA score
(ped_score(x, y, "sfda")).

Prediction (before measuring). At this shape the work is SFDA's: a D x D
Gram matrix of the N x D residuals (N D^2 = 8.3e10 multiply-adds) and a
D x D factorisation; PED is a few passes of O(N D) per step. One PED+SFDA
score forms two Grams: the first fit's (the within-class scatter, which PED
does not change: shared) and ConfMix's second fit's, of the residuals
weighted by each sample's own-class probability q_i, which depends on the
class means PED moves. A sweep shares the first and forms the second at
every point: 1 + 20 = 21 Grams against 2, so about 10x one score, not the
issue's 3x. The 3x bar needs the second fit shared too, and it cannot be
without changing SFDA: sum_i q_i^2 r_i r_i^T changes with every q.
LogME's shared work (R^T R) is the same at every point, its per-point
cost an eigendecomposition of D x D: about the same ratio of D^3 terms.

Measured on 2026-12-05 (--threads 2, on a CPU
shared with other jobs): one PED+SFDA 32 s, the grid 547 s: 17x. The
prediction missed per-point work besides the second Gram: both fits'
N x D by D x C products (1.6e10 each) and the second factorisation, which
put a point at ~1.4x the shared part; (1 + 20 x 1.4) / (1 + 1.4) ~ 12-15x.

Run: python bench/bench_ped_grid.py [--threads T]; PED_FAST_BENCH_SHAPES=tiny
for a seconds-long run. Writes bench/results/ped-grid-DATE.json.
"""
import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import SHAPE_SET, SHAPES, make_features  # noqa: E402

from ped_fast.score import ped_score, ped_sweep  # noqa: E402

GRID = {"nsigma": [0.2, 0.4, 0.6, 0.8, 1.0], "time_step": [0.05, 0.1, 0.15, 0.2]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, d, c = SHAPES["sun397"]
    x, labels, reference = make_features(n, d, c, dtype=torch.float64)
    stats = (reference.mean(0), reference.std(0))
    ped_score(x[: 4 * c], labels[: 4 * c], "sfda", reference=stats)  # warm-up: first-call costs are not the grid's
    start = time.perf_counter()
    one = ped_score(x, labels, "sfda", reference=stats)
    single = time.perf_counter() - start
    start = time.perf_counter()
    sweep = ped_sweep(x, labels, "sfda", GRID, reference=stats)
    grid = time.perf_counter() - start
    default = next(s["sfda"].ped for p, s in sweep if p == {"nsigma": 0.6, "time_step": 0.1})
    if abs(default - one) > 1e-9 * abs(one):
        raise AssertionError(f"the sweep's default point {default} is not ped_score's {one}")
    result = {"shape": SHAPE_SET, "n": n, "d": d, "c": c, "threads": torch.get_num_threads(), "points": len(sweep),
              "one_ped_sfda_s": single, "grid_s": grid, "ratio": grid / single, "predicted_ratio": 21 / 2}
    print(json.dumps(result, indent=2))
    out = Path(__file__).resolve().parent / "results" / f"ped-grid-{datetime.date.today()}.json"
    if SHAPE_SET == "full":
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
