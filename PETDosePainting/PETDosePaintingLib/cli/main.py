"""``petdp``: the PETDosePainting command line.

Each sub-command lives in its own module of this package, exposing ``register(subparsers)`` which adds
its parser and sets ``func`` to a ``run(args) -> int`` function. Heavy imports happen inside ``run`` so
``petdp --help`` stays fast.

Exit codes: 0 success; 1 the computation failed; 2 invalid usage or input (argparse errors, unreadable
or inconsistent files). Errors go to stderr as one line ``petdp <command>: error: <message>``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import PETDPError

#: Sub-command modules, in the order ``petdp --help`` lists them.
COMMAND_MODULES = (
    "demo", "phantom", "suv", "segment", "evaluate", "calibrate", "compare", "adc", "prescribe", "hypoxia",
    "evaluate_plan", "dvh", "convert_rtstruct", "batch", "report", "plan", "register", "accumulate",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="petdp",
        description="PETDosePainting: PET-guided GTV segmentation and dose painting for head-and-neck "
                    "radiotherapy (batch command line of the 3D Slicer extension).",
        epilog="Exit codes: 0 success, 1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("--version", action="version", version=f"petdp {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``petdp`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except PETDPError as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"petdp {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"petdp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: still one clear line, the traceback on request
        if args.traceback:
            traceback.print_exc()
        print(f"petdp {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(run with --traceback for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
