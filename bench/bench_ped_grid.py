"""PED's sensitivity grid (issue 16 point 5): what ped_sweep() costs for a
20-point grid (nsigma x time_step, 5 x 4) with SFDA at SUN397 shape
(N=19850, D=2048, C=397, float64, CPU), against one PED+SFDA score
(ped_score(x, y, "sfda")). The sweep is run as the screen runs it,
without the plain scores (return_baseline=False: the screen has them).

First version (2026-12-05, predicted 10.5x, measured 17x on a busy CPU):
every point formed both of SFDA's N x D x C logit products and the second
(ConfMix) fit; only the first fit's scatter and factorisation were shared.

Prediction for this version, from docs/benchmarks.md §8's component times
(2 cores, float64): one PED+SFDA = PED 0.18 s + the shared part (residuals,
Sw by syrk 1.24 s, shrinkage, Cholesky: ~1.5 s) + one score (first-fit
logits 0.41, ConfMix passes ~0.15, second Sw 1.24, Cholesky and solves
0.1, second logits 0.41: ~2.3 s) = ~4.1 s (measured 4.2). The sweep
shares the first part and, from its second point on, the first fit: PED
moves means only along differences of means, so the moved means stay in
the input means' affine hull (C = 397 dimensions of D = 2048), and the
first-fit logits are R B^-1 Q (N x C, formed once, 0.45 s) times each
point's C x C coordinates (N C^2, 0.08 s). Per point: PED 0.18 + the
moved class statistics 0.02 + first fit 0.08 + ConfMix 0.15 + second Sw
1.24 + Cholesky and solve 0.1 + second logits 0.41 = ~2.2 s. Grid: 1.5 +
0.45 + 0.35 (the first point's full first fit) + 20 x 2.2 = ~46 s, ~11x.
The 3x target cannot be met exactly: the second fit weighs each residual
by its own-class probability q_i, which moves with the means, so its
scatter sum_i q_i^2 r_i r_i^T (N D^2) is each point's own; 20 of them
alone are 20 x 1.24 / 4.2 = 5.9x one score.

Measured (docs/benchmarks.md §13): 9.9x on one thread (the first version
14.6x); this grid has 17 distinct feature sets of 20 points.

Run: python bench/bench_ped_grid.py [--threads T]; PED_FAST_BENCH_SHAPES=tiny
for a seconds-long run. Writes bench/results/ped-grid-DATE.json (with
--threads T other than 2: ped-grid-DATE-Tthread.json).
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import SHAPE_SET, SHAPES, make_features  # noqa: E402

from ped_fast.score import ped_score, ped_sweep  # noqa: E402

PREDICTED_RATIO = 11.0  # see the docstring: written before the measurement
GRID = {"nsigma": [0.2, 0.4, 0.6, 0.8, 1.0], "time_step": [0.05, 0.1, 0.15, 0.2]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's and the BLAS libraries' threads (default: theirs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        # scipy's OpenBLAS, which runs the scorers' BLAS and LAPACK calls
        # (ped_fast/scorers/_linalg.py), has its own pool.
        threadpool_limits(args.threads)
    n, d, c = SHAPES["sun397"]
    x, labels, reference = make_features(n, d, c, dtype=torch.float64)
    stats = (reference.mean(0), reference.std(0))
    ped_score(x[: 4 * c], labels[: 4 * c], "sfda", reference=stats)  # warm-up: first-call costs are not the grid's
    # CPU time beside wall time: on a CPU shared with other jobs the wall
    # time of a 2-thread run stretches with their load, its CPU time much less.
    start, cpu = time.perf_counter(), time.process_time()
    one = ped_score(x, labels, "sfda", reference=stats)
    single, single_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    sweep = ped_sweep(x, labels, "sfda", GRID, reference=stats, return_baseline=False)
    grid, grid_cpu = time.perf_counter() - start, time.process_time() - cpu
    default = next(s["sfda"].ped for p, s in sweep if p == {"nsigma": 0.6, "time_step": 0.1})
    if abs(default - one) > 1e-9 * abs(one):
        raise AssertionError(f"the sweep's default point {default} is not ped_score's {one}")
    result = {"shape": SHAPE_SET, "n": n, "d": d, "c": c, "threads": torch.get_num_threads(), "points": len(sweep),
              "load_average": os.getloadavg()[0],
              "one_ped_sfda_s": single, "grid_s": grid, "ratio": grid / single, "one_ped_sfda_cpu_s": single_cpu,
              "grid_cpu_s": grid_cpu, "cpu_ratio": grid_cpu / single_cpu, "predicted_ratio": PREDICTED_RATIO,
              "distinct_shifts": len({s["sfda"].result.shift.numpy().tobytes() for _, s in sweep})}
    print(json.dumps(result, indent=2))
    suffix = "" if args.threads in (None, 2) else f"-{args.threads}thread"
    out = Path(__file__).resolve().parent / "results" / f"ped-grid-{datetime.date.today()}{suffix}.json"
    if SHAPE_SET == "full":
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
