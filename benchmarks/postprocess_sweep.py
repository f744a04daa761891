"""Choose the post-processing defaults (score and mask thresholds, max overlap) on training wells.

`core.threshold_search.search_thresholds` (what `napari-semiconv tune-thresholds` runs on a
user's images) with the benchmark's extra knobs: the network runs once per well and mask
threshold (`core.inference.detect`, with the mask probabilities); every score threshold,
max overlap and, where the model sees a foreground (binary input, bright-field cascade),
lone-worm filling and sharing out of touching worms is applied to the same detections through
`core.refine.refine_instances` as `segment` runs it, and scored (COCO mask AP and avS,
`core.evaluation.evaluate`). ``--no-clip`` shows the figures without the foreground;
``--box-nms`` and, for a bright-field cascade, ``--foreground-cuts`` (its U-Net's cut) run the
network again per value.
Pass only wells the model was trained on: settings chosen on held-out wells would inflate the
held-out scores. The best setting by avS is printed last; the JSON holds every row.

    python benchmarks/postprocess_sweep.py --model worms-binary \
        --data ../shared/data/bbbc010/train --wells A01,A07,A13,A17,A22,B02,B07,B11,B17,B21 \
        --json-out docs/postprocess_binary.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_semiconv.core.inference import DEFAULT_SCORE_THRESHOLD, load_model
from napari_semiconv.core.threshold_search import search_thresholds
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
    p.add_argument(
        "--box-nms",
        type=_floats,
        default=[],
        help="box NMS IoU thresholds of the RoI heads to try (default: the model's); the "
        "network runs again for each",
    )
    p.add_argument(
        "--foreground-cuts",
        type=_floats,
        default=[],
        help="a bright-field cascade's U-Net cuts to try (ModelConfig.foreground_threshold: "
        "the detector's binary input and the clean-up's foreground; default: the model's); the "
        "network runs again for each",
    )
    p.add_argument("--no-clip", action="store_true", help="do not use the foreground")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", help="write every row here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu")
    mode = model.config.input_mode
    if args.foreground_cuts and not model.config.foreground_width:
        p.error(f"--foreground-cuts needs a bright-field cascade; {args.model} has no U-Net")
    samples = read_samples(args.data, "bbbc010", mode, args.wells.split(","))
    divides = {"on": [True], "off": [False], "both": [True, False]}[args.divide]
    started = time.perf_counter()
    rows = []
    # the box NMS runs inside the network (torchvision's RoIHeads.nms_thresh), before the
    # mask-overlap suppression of the clean-up: crossing worms have overlapping boxes
    for box_nms in args.box_nms or [model.roi_heads.nms_thresh]:
        model.roi_heads.nms_thresh = box_nms
        found = search_thresholds(
            model,
            samples,
            args.score_thresholds,
            args.mask_thresholds,
            args.max_overlaps,
            fill_covers=args.fill_covers,
            divides=divides,
            use_foreground=not args.no_clip,
            foreground_cuts=args.foreground_cuts or None,
        )
        rows += [{**row, "box_nms": box_nms} for row in found]
    for row in rows:
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
