"""Accuracy of a tiled run against the same images segmented whole (how much the seams cost).

A 696x520 BBBC010 image fits one tile; tiling it at ``--tile-size`` (512 by default) puts seams
through it, so the difference to the whole-image run is what tiling costs on large images.

    python benchmarks/tiled_vs_whole.py --data ../shared/data/bbbc010/train \
        --wells A01,A03,A04,A05,A06,A07,A09,A11,A12,A13 --json-out runs/tiled.json

Prints (and writes) one JSON object: per tile size ("whole" or the size), AP, AP50, avS and the
number of worms found.
"""

from __future__ import annotations

import argparse

import torch
from scoring import emit, scored_row

from napari_semiconv.core.data.bbbc010 import read_bbbc010
from napari_semiconv.core.inference import load_model, segment


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="BBBC010 training folder")
    parser.add_argument("--wells", default="A01,A03,A04,A05,A06,A07,A09,A11,A12,A13")
    parser.add_argument("--model", default="worms-brightfield")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    samples = read_bbbc010(args.data, model.config.input_mode, wells=args.wells.split(","))
    truths = [s.masks for s in samples]
    out: dict = {"model": args.model, "wells": args.wells, "overlap": args.overlap}
    for tile in (None, args.tile_size):
        found = [
            segment(model, s.image, tile_size=tile, overlap=args.overlap, preprocessed=True)
            for s in samples
        ]
        out["whole" if tile is None else str(tile)] = scored_row(found, truths)
    return emit(out, args.json_out)


if __name__ == "__main__":
    main()
