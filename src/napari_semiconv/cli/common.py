"""Arguments and helpers shared by the train / evaluate sub-commands."""

from __future__ import annotations

import argparse


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
