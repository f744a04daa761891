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

FOLD0 = "A02,A04,A08,A10,A19,B06,B12,B15,B22,C01"


def resized(array: np.ndarray, factor: float, order: str) -> np.ndarray:
    """An image (H, W) or masks (N, H, W) resized by ``factor`` (masks cut at 0.5)."""
    stack = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    stack = stack[None] if stack.ndim == 2 else stack
    shape = (round(array.shape[-2] * factor), round(array.shape[-1] * factor))
    out = F.interpolate(stack[None], size=shape, mode="bilinear", antialias=factor < 1)[0]
    out = out > 0.5 if order == "masks" else out
    return out.numpy() if array.ndim == 3 else out[0].numpy()


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
        truths = [resized(s.masks, factor, "masks") for s in samples]
        if model.config.input_mode == "binary":
            images = [t.any(axis=0).astype(np.float32) for t in truths]
        else:
            images = [resized(read_w2(args.data, w).astype(np.float32), factor, "image")
                      for w in wells]  # fmt: skip
        for rescale in (1.0, 1.0 / factor):
            found = [segment(model, im, rescale=rescale) for im in images]
            key = f"x{factor:g}, rescale {rescale:g}"
            out[key] = scored_row(found, truths)
            print(f"{key}: {out[key]}", flush=True)
    return emit(out, args.json_out)


if __name__ == "__main__":
    main()
