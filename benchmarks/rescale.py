"""Worms at another pixel size: BBBC010 wells resized by a factor, segmented as they are and with
``segment(..., rescale=1/factor)``, scored against the worm masks resized the same way.

    python benchmarks/rescale.py --data ../shared/data/bbbc010/train --json-out runs/rescale.json

Prints (and writes) one JSON object: per resize factor, AP, AP50, avS and worms found, without
and with the matching rescale. The wells default to fold 0's ten; nothing is chosen on them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from scoring import emit, scored_row

from napari_semiconv.core.data.bbbc010 import read_bbbc010, read_w2
from napari_semiconv.core.inference import load_model, segment
from napari_semiconv.core.rescale import masks_at_size

FOLD0 = "A02,A04,A08,A10,A19,B06,B12,B15,B22,C01"


def resized_image(image: np.ndarray, factor: float) -> np.ndarray:
    """A raw (H, W) image resized by ``factor`` (bilinear, antialiased when shrinking)."""
    stack = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    shape = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    return F.interpolate(stack, size=shape, mode="bilinear", antialias=factor < 1)[0, 0].numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="BBBC010 training folder")
    parser.add_argument("--wells", default=FOLD0)
    parser.add_argument("--model", default="worms-brightfield")
    parser.add_argument("--factors", default="2,0.5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    wells = args.wells.split(",")
    samples = read_bbbc010(args.data, "binary", wells=wells)  # the masks; images below
    out: dict = {"model": args.model, "wells": args.wells}
    for factor in (float(f) for f in args.factors.split(",")):
        shape = (
            round(samples[0].masks.shape[1] * factor),
            round(samples[0].masks.shape[2] * factor),
        )
        truths = [masks_at_size(s.masks, shape) for s in samples]  # as segment brings worms back
        if model.config.input_mode == "binary":
            images = [t.any(axis=0).astype(np.float32) for t in truths]
        else:
            images = [resized_image(read_w2(args.data, w), factor) for w in wells]
        for rescale in (1.0, 1.0 / factor):
            found = [segment(model, im, rescale=rescale) for im in images]
            key = f"x{factor:g}, rescale {rescale:g}"
            out[key] = scored_row(found, truths)
            print(f"{key}: {out[key]}", flush=True)
    return emit(out, args.json_out)


if __name__ == "__main__":
    main()
