"""Choose the post-processing defaults (score and mask thresholds, max overlap) on training wells.

Runs the network once per well and mask threshold (`core.inference.detect`: detections down to
score 0.05, with their mask probabilities), then applies every score threshold, max-overlap
setting and (where the model sees a foreground: binary input, bright-field cascade) lone-worm
filling and sharing out of touching worms to the same detections, through
`core.refine.refine_instances` as `segment` runs it, and scores each setting (COCO mask AP and
avS, `core.evaluation.evaluate`). ``--no-clip`` shows the figures without the foreground.
Pass only wells the model was trained on: settings chosen on held-out wells would inflate the
held-out scores. The best setting by avS is printed last; the JSON holds every row.

    python benchmarks/postprocess_sweep.py --model worms-binary \
        --data ../shared/data/bbbc010/train --wells A01,A07,A13,A17,A22,B02,B07,B11,B17,B21 \
        --json-out docs/postprocess_binary.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_semiconv.core.evaluation import evaluate
from napari_semiconv.core.inference import (
    DEFAULT_SCORE_THRESHOLD,
    detect,
    load_model,
    worm_foreground,
)
from napari_semiconv.core.refine import refine_instances
from napari_semiconv.core.training_data import read_samples


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="BBBC010 folder (images/, eachworm/)")
    p.add_argument("--wells", required=True, help="comma-separated training wells")
    p.add_argument("--mask-thresholds", type=_floats, default=[0.2, 0.3, 0.4, 0.5])
    p.add_argument("--max-overlaps", type=_floats, default=[1.0, 0.5, 0.3, 0.2])
    p.add_argument(
        "--fill-covers",
        type=_floats,
        default=[2.0, 0.7, 0.5, 0.3],
        help="binary mode: fill_lone_worms min_cover values (above 1: no filling)",
    )
    p.add_argument("--score-thresholds", type=_floats, default=[DEFAULT_SCORE_THRESHOLD])
    p.add_argument(
        "--divide",
        default="on",
        choices=["on", "off", "both"],
        help="share out the pixels of touching worms (as segment does by default)",
    )
    p.add_argument("--no-clip", action="store_true", help="do not use the foreground")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", help="write every row here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu")
    mode = model.config.input_mode
    samples = read_samples(args.data, "bbbc010", mode, args.wells.split(","))
    truths = [s.masks for s in samples]
    divides = {"on": [True], "off": [False], "both": [True, False]}[args.divide]
    rows = []
    started = time.perf_counter()
    for mask_threshold in args.mask_thresholds:
        found = [detect(model, s.image, 0.05, mask_threshold) for s in samples]
        foregrounds = [
            None if args.no_clip else worm_foreground(f, s.image, mode)
            for (f, _), s in zip(found, samples, strict=True)
        ]
        clip = any(fg is not None for fg in foregrounds)
        covers = args.fill_covers if clip else [2.0]
        settings = itertools.product(
            args.score_thresholds, args.max_overlaps, covers, divides if clip else [False]
        )
        for score_threshold, max_overlap, min_cover, divide in settings:
            preds = []
            for (f, soft), fg in zip(found, foregrounds, strict=True):
                keep = np.flatnonzero(f.scores >= score_threshold)
                kept_soft = [soft[i] for i in keep] if divide else None
                preds.append(
                    refine_instances(
                        f.masks[keep], f.scores[keep], fg, max_overlap, min_cover, soft=kept_soft
                    )
                )
            summary = evaluate(preds, truths, per_image_ap=False).summary
            row = {
                "mask_threshold": mask_threshold,
                "max_overlap": max_overlap,
                "fill_min_cover": min_cover if clip else None,
                "score_threshold": score_threshold,
                "use_foreground": clip,
                "divide": divide,
                **{k: summary[k] for k in ("AP", "AP50", "AP75", "avS")},
                "n_pred": int(sum(len(q[1]) for q in preds)),
                "n_true": int(sum(len(t) for t in truths)),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["avS"])
    result = {
        "model": args.model,
        "input_mode": mode,
        "wells": args.wells.split(","),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "best_by_avS": best,
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    print("best by avS:", json.dumps(best))


if __name__ == "__main__":
    main()
