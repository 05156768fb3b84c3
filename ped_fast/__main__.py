"""Command line: python -m ped_fast demo"""
import argparse
import sys

from .demo import run_demo


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ped_fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run PED on built-in data (scikit-learn's digits) and print a report")
    demo.add_argument("--backend", default="auto", help="backend to run (default: every CPU backend available)")
    args = parser.parse_args(argv)
    return run_demo(backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
