"""What the accuracy benchmarks share: one row of scores, and the JSON they print and write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_semiconv.core.evaluation import evaluate


def scored_row(found: list[Any], truths: list[Any]) -> dict[str, float]:
    """AP, AP50 and avS of ``found`` (Instances per image) against ``truths``, and the count."""
    summary = evaluate(found, truths, per_image_ap=False).summary
    row = {k: round(float(summary[k]), 4) for k in ("AP", "AP50", "avS")}
    return row | {"n": sum(len(f) for f in found)}


def emit(out: dict, json_out: str | None) -> dict:
    """Print ``out`` as one JSON line and write it (indented) to ``json_out`` if given."""
    print(json.dumps(out))
    if json_out:
        Path(json_out).write_text(json.dumps(out, indent=1) + "\n")
    return out
