"""Command line: python -m ped_fast demo (ranks feature extractors of built-in data)"""
import argparse
import sys

import torch

from . import _backends
from .demo import run_demo


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ped_fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="rank feature extractors of scikit-learn's digits by SFDA and PED+SFDA and print a report")
    demo.add_argument("--backend", default="auto", help="PED backend (default: auto, the fastest available)")
    args = parser.parse_args(argv)
    # A backend that does not exist or cannot run here is the caller's
    # mistake: one line saying so, not a traceback from deep in the run.
    try:
        _backends.resolve(args.backend, torch.device("cpu"))
    except (ValueError, RuntimeError) as error:
        demo.error(f"--backend {args.backend}: {error}")
    return run_demo(backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
