"""Test-time augmentation's vote: how sure each view must be of a worm for it to count.

Each view keeps the detections scoring at least ``core.tta.VIEW_SCORE_FRACTION`` × the score
threshold; the fused score (the views' sum over their number) must reach the full threshold.
This runs ``segment(..., views=N)`` on the given wells for each fraction and scores it (choose on
training wells only).

    python benchmarks/tta_sweep.py --model worms-binary --data ../shared/data/bbbc010/train \\
        --wells "$(cat runs/train40.txt)" --views 8 --fractions 1,0.5 --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_semiconv.core import tta
from napari_semiconv.core.evaluation import evaluate
from napari_semiconv.core.inference import load_model, segment
from napari_semiconv.core.training_data import read_samples

KEYS = ("AP", "AP50", "AP75", "avS", "S50", "S90")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model name or checkpoint")
    p.add_argument("--data", required=True, help="BBBC010 folder (images/, eachworm/)")
    p.add_argument("--wells", required=True, help="comma-separated wells")
    p.add_argument("--views", type=int, default=8, choices=sorted(tta.VIEW_SETS))
    p.add_argument("--fractions", default="1,0.5", help="comma-separated, in (0, 1]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", help="write the rows here")
    args = p.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    if not all(0.0 < f <= 1.0 for f in fractions):
        raise SystemExit(f"--fractions must lie in (0, 1], got {args.fractions}")
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    samples = read_samples(args.data, "bbbc010", model.config.input_mode, args.wells.split(","))
    rows = []
    for fraction in fractions:
        tta.VIEW_SCORE_FRACTION = fraction
        predictions = [
            segment(model, s.image, preprocessed=True, views=args.views) for s in samples
        ]
        result = evaluate(predictions, [s.masks for s in samples])
        rows.append({"fraction": fraction, **{k: float(result.summary[k]) for k in KEYS}})
        print(json.dumps(rows[-1]), flush=True)
    if args.json_out:
        wells = args.wells.split(",")
        out = {"model": args.model, "views": args.views, "wells": wells, "rows": rows}
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
