"""`napari-semiconv` command line: a thin dispatcher over the core.

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; modules are imported only when listed here, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

# sub-command name -> module under napari_semiconv.cli
SUBCOMMANDS = {
    "demo": "demo",
    "experiment": "experiment",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "models": "models",
    "train-foreground": "foreground",
    "tune-thresholds": "thresholds",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-semiconv",
        description="Semi-convolutional Mask R-CNN for worm segmentation "
        "(Novotny et al., ECCV 2018).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(f"napari_semiconv.cli.{module}")
        except ModuleNotFoundError as exc:  # a sub-command not built in this checkout
            if exc.name == f"napari_semiconv.cli.{module}":
                continue
            raise
        mod.add_parser(sub)
    return parser


_PACKAGE = str(Path(__file__).resolve().parent.parent)


@contextlib.contextmanager
def _plain_package_warnings(command: str) -> Iterator[None]:
    """This package's warnings as one plain line each ("an image without labels: skipped"),
    not Python's warning with the library's file, line and source (which named
    ``core/training_data.py:56`` and ``samples = read_folders(...)`` to a user whose label
    file's name did not match). Other packages' warnings are shown as usual."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(Path(filename).resolve()).startswith(_PACKAGE):
            print(f"napari-semiconv {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the records commands write
    try:
        with _plain_package_warnings(args.command):
            return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        # user errors and the file system's (missing, existing, read-only, full disk, a file
        # where a folder should be): one clear line, no traceback
        print(f"napari-semiconv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: every file is written atomically (complete or absent) and an unfinished demo
        # run folder is removed, so one line says what is kept instead of a traceback
        kept = getattr(args, "interrupted_note", "no half-written file was left")
        print(f"napari-semiconv {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
