"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def noting_runtime_warnings(work: Callable[[], T]) -> tuple[T, list[str]]:
    """``work()``'s result and the RuntimeWarnings it raised, as plain messages (e.g. a tile at
    the model's worm limit, worms far from the model's size): a command prints them as lines
    of its own, naming the image, instead of Python's warning with a source line. Other
    warnings are shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    notes: list[str] = []
    for w in caught:
        if issubclass(w.category, RuntimeWarning):
            if str(w.message) not in notes:
                notes.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result, notes


def add_data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--data DIR --layout bbbc010|folders --input binary|brightfield --wells A01,A02."""
    p.add_argument("--data", required=required, help="data folder (see --layout)")
    p.add_argument(
        "--layout",
        choices=["bbbc010", "folders"],
        default="bbbc010",
        help="bbbc010: images/ + eachworm/ as published; folders: images/ + labels/ by file stem",
    )
    p.add_argument(
        "--input",
        choices=["binary", "brightfield"],
        help="input mode (default: the model's, or binary for a new model)",
    )
    p.add_argument("--wells", help="BBBC010 wells to use, comma-separated, e.g. A01,A02")


def split_wells(text: str | None) -> list[str] | None:
    """'A01, a02' -> ['A01', 'A02']; None/empty -> None."""
    if not text:
        return None
    wells = [w.strip().upper() for w in text.split(",") if w.strip()]
    return wells or None
