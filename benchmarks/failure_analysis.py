"""Where does a model lose? Per true worm: alone in its foreground blob or touching others, its
best IoU with a found worm, and for the touching worms it misses (best IoU < 0.5) whether one
found worm covers it together with a neighbour (merged), several share it (split), or none
covers it. Also how well the displacement votes u + Φ_u separate worms: their spread within a
worm and the distance between the vote centres of touching worms.

Run it on training wells when the answer will choose what to build next (held-out wells would
then no longer be held out):

    python benchmarks/failure_analysis.py --model worms-binary \
        --data ../shared/data/bbbc010/train --wells <the 40 training wells> --json-out out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_semiconv.core.inference import load_model, segment
from napari_semiconv.core.training_data import read_samples

MISS_IOU = 0.5  # a true worm whose best match is below this is missed
COVER = 0.3  # a found worm "covers" a true worm holding this fraction of its pixels


def _overlaps(found: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intersection (P, T) in pixels, IoU (P, T))."""
    p = found.reshape(len(found), -1).astype(np.float32)
    t = truth.reshape(len(truth), -1).astype(np.float32)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None] - inter
    return inter, inter / np.maximum(union, 1.0)


def _neighbours(truth: np.ndarray) -> list[list[int]]:
    """For each true worm, the others in its 8-connected foreground blob."""
    blobs, _ = ndi.label(truth.any(0), structure=np.ones((3, 3)))
    ids = [set(np.unique(blobs[m])) - {0} for m in truth]
    return [[u for u in range(len(truth)) if u != t and ids[t] & ids[u]] for t in range(len(truth))]


def _votes(displacement: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.stack([rows + displacement[0, rows, cols], cols + displacement[1, rows, cols]], 1)


def analyse(model: torch.nn.Module, samples: list) -> dict:
    best = {"lone": [], "touching": []}
    misses = {"merged": 0, "split": 0, "uncovered": 0, "other": 0}
    spread, apart = [], []
    n_found = 0
    for sample in samples:
        found = segment(model, sample.image, preprocessed=True)
        truth = sample.masks
        n_found += len(found)
        inter, iou = _overlaps(found.masks, truth)
        areas = truth.reshape(len(truth), -1).sum(1)
        neighbours = _neighbours(truth)
        alone = truth.sum(0) == 1  # pixels of one true worm only (crossings carry no vote target)
        centres = []
        for t in range(len(truth)):
            votes = _votes(found.displacement, truth[t] & alone)
            centre = np.median(votes, 0) if len(votes) else np.full(2, np.nan)
            centres.append(centre)
            if len(votes):
                spread.append(float(np.median(np.linalg.norm(votes - centre, axis=1))))
            kind = "touching" if neighbours[t] else "lone"
            score = float(iou[:, t].max()) if len(found) else 0.0
            best[kind].append(score)
            if kind == "lone" or score >= MISS_IOU:
                continue
            cover = inter[:, t] / areas[t] if len(found) else np.zeros(0)
            covering = np.flatnonzero(cover > COVER)
            if len(covering) == 0:
                misses["uncovered"] += 1
            elif len(covering) > 1:
                misses["split"] += 1
            elif any(inter[covering[0], u] / areas[u] > 0.5 for u in neighbours[t]):
                misses["merged"] += 1
            else:
                misses["other"] += 1
        for t in range(len(truth)):
            for u in neighbours[t]:
                if u > t and np.isfinite(centres[t]).all() and np.isfinite(centres[u]).all():
                    apart.append(float(np.linalg.norm(centres[t] - centres[u])))

    def describe(values: list[float]) -> dict:
        v = np.asarray(values)
        return {
            "n": len(v),
            "mean_best_iou": round(float(v.mean()), 4) if len(v) else None,
            "at_least_0.9": round(float((v >= 0.9).mean()), 4) if len(v) else None,
            "at_least_0.5": round(float((v >= 0.5).mean()), 4) if len(v) else None,
        }

    return {
        "lone": describe(best["lone"]),
        "touching": describe(best["touching"]),
        "touching_misses": misses,
        "vote_spread_px": {
            "median": round(float(np.median(spread)), 1),
            "p90": round(float(np.percentile(spread, 90)), 1),
        },
        "touching_vote_centres_apart_px": {
            "median": round(float(np.median(apart)), 1),
            "p10": round(float(np.percentile(apart, 10)), 1),
            "n_pairs": len(apart),
        },
        "n_found": n_found,
        "n_true": int(sum(len(s.masks) for s in samples)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="BBBC010 folder (images/, eachworm/)")
    p.add_argument("--wells", required=True, help="comma-separated wells")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", help="write the result here too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    samples = read_samples(args.data, "bbbc010", model.config.input_mode, args.wells.split(","))
    result = {"model": args.model, "wells": args.wells.split(","), **analyse(model, samples)}
    text = json.dumps(result, indent=1)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
