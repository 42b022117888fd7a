"""The training command line, shared by ``python -m elqproj.training`` and ``elqproj train``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config (YAML), e.g. configs/irib_osediff.yaml")
    parser.add_argument("--resume", default=None,
                        help="'latest' (newest complete checkpoint of output_dir, if any) or a checkpoint directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.max_steps=1000 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Train with the parsed options; prints the final checkpoint directory. Errors propagate."""
    from .config import load_config
    from .trainer import train

    final = train(load_config(args.config, overrides=args.overrides), resume=args.resume)
    print(final)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import sys

    from ..errors import ElqprojError

    parser = argparse.ArgumentParser(prog="python -m elqproj.training",
                                     description="IRIB training of a projector (see docs/training.md).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args)
    except ElqprojError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
