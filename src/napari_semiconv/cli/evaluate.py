"""`napari-semiconv evaluate`: COCO mask AP and PatchPerPix S/avS of a model on a data folder."""

from __future__ import annotations

import argparse
import json
import math

from napari_semiconv.cli.common import add_data_arguments, split_wells
from napari_semiconv.cli.predict import NO_FOREGROUND_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on annotated images (COCO mask AP, avS)",
        description="Segment every image of --data with --model and score against its labels. "
        "With --json the last line of the output is one JSON object with the summary.",
    )
    p.add_argument("--model", required=True, help="model name (see `models`) or checkpoint path")
    add_data_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--score-threshold", type=float, help="default: the model's own")
    p.add_argument("--mask-threshold", type=float, help="default: the model's own")
    p.add_argument("--max-overlap", type=float, help="default: the model's own")
    p.add_argument(
        "--foreground-threshold",
        type=float,
        help="bright-field cascades: a pixel is worm where the foreground network's probability "
        "exceeds this (default: the model's own; worms-brightfield 0.6)",
    )
    p.add_argument(
        "--no-foreground",
        dest="use_foreground",
        action="store_false",
        help=NO_FOREGROUND_HELP,
    )
    p.add_argument(
        "--no-divide",
        dest="divide_touching",
        action="store_false",
        help="keep the thresholded masks of touching worms as they are (see predict --no-divide)",
    )
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default: automatic)")
    p.add_argument(
        "--overlap",
        type=int,
        help="tile overlap in pixels, under half the tile size (default 64, less for tiles "
        "under 130 px)",
    )
    p.add_argument(
        "--views",
        type=int,
        default=1,
        choices=(1, 2, 4, 8),
        help="test-time augmentation: flipped/transposed views to fuse (see predict --views)",
    )
    p.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    p.set_defaults(run=run)
    return p


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def run(args: argparse.Namespace) -> int:
    from napari_semiconv.core.evaluation import evaluate
    from napari_semiconv.core.inference import load_model, segment
    from napari_semiconv.core.model.run_modes import check_foreground_cut
    from napari_semiconv.core.tiling import check_tiling, default_overlap
    from napari_semiconv.core.training_data import read_samples

    model = load_model(args.model, device=args.device)
    mode = model.config.input_mode
    if args.input and args.input != mode:
        raise ValueError(
            f"--input {args.input} does not match the model's input mode {mode!r}; "
            f"drop --input or pass --input {mode}"
        )
    check_foreground_cut(model, args.foreground_threshold)  # before reading any data
    overlap = default_overlap(args.tile_size) if args.overlap is None else args.overlap
    check_tiling(args.tile_size, overlap, "--tile-size", "--overlap")  # before reading any data
    samples = read_samples(args.data, args.layout, mode, split_wells(args.wells))
    predictions = []
    for i, sample in enumerate(samples):
        predictions.append(
            segment(
                model,
                sample.image,
                score_threshold=args.score_threshold,
                mask_threshold=args.mask_threshold,
                max_overlap=args.max_overlap,
                use_foreground=args.use_foreground,
                divide_touching=args.divide_touching,
                tile_size=args.tile_size,
                overlap=overlap,
                views=args.views,
                foreground_threshold=args.foreground_threshold,
                preprocessed=True,
            )
        )
        print(f"[{i + 1}/{len(samples)}] {sample.name}: {len(predictions[-1])} worms", flush=True)
    result = evaluate(predictions, [s.masks for s in samples], names=[s.name for s in samples])
    print(result.format())
    if args.json:
        summary = {k: _clean(v) for k, v in result.summary.items()}
        print(json.dumps(summary, sort_keys=True))
    return 0
