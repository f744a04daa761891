"""How close are the synthetic worms to BBBC010's? Prints the table of docs/synthetic-worms.md.

    python benchmarks/synthetic_vs_real.py [--real PATH] [--n 50] [--seed 0]

Measured the same way on both sets, per worm mask (one file per worm in BBBC010's eachworm/):

- length: pixels of the mask's skeleton (skimage ``skeletonize``); a skeleton stops short of the
  worm's tips, so this is a few pixels below the true centre-line length, alike for both sets;
- width: area / skeleton length (mean width), and the widest width 2 x max(distance transform);
- straightness: maximum Feret diameter / skeleton length (~1 for a straight worm, < 0.8 curled);
- per image: worm count, overlap = pixels covered by >= 2 worms / pixels covered by >= 1, and the
  fraction of worms sharing at least one pixel with another worm.
Bright-field intensities (real ``w2`` vs synthetic brightfield): the 1st and 99.8th percentiles
and the mean worm/background ratio (worm pixels vs a 3-6 px ring around the worms in the well).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.morphology import skeletonize

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc010" / "train"


def worm_stats(masks: np.ndarray) -> dict[str, list[float]]:
    """Per-worm and per-image statistics of one image's (N, H, W) masks."""
    out: dict[str, list[float]] = {k: [] for k in ("length", "width", "widest", "area", "straight")}
    count = masks.sum(axis=0)
    for mask in masks:
        length = float(skeletonize(mask).sum())
        area = float(mask.sum())
        out["length"].append(length)
        out["area"].append(area)
        out["width"].append(area / max(length, 1.0))
        out["widest"].append(2.0 * float(ndi.distance_transform_edt(mask).max()))
        out["straight"].append(regionprops(mask.astype(np.uint8))[0].feret_diameter_max / length)
    touching = [bool((count - m)[m].any()) for m in masks]
    out["per_image_count"] = [float(len(masks))]
    out["per_image_overlap"] = [float((count >= 2).sum() / max((count >= 1).sum(), 1))]
    out["touching"] = [float(t) for t in touching]
    return out


def intensity_stats(image: np.ndarray, masks: np.ndarray) -> dict[str, list[float]]:
    """Raw bright-field levels: percentiles and the worm / local-background ratio."""
    union = masks.any(axis=0)
    ring = ndi.binary_dilation(union, iterations=6) & ~ndi.binary_dilation(union, iterations=3)
    img = image.astype(np.float64)
    p1, p998 = np.percentile(img, (1, 99.8))
    return {"p1": [p1], "p99.8": [p998], "worm/bg": [img[union].mean() / img[ring].mean()]}


def _merge(into: dict[str, list[float]], new: dict[str, list[float]]) -> None:
    for key, values in new.items():
        into.setdefault(key, []).extend(values)


def real_sets(root: Path):
    from napari_semiconv.core.data.bbbc010 import read_bbbc010, read_w2

    for sample in read_bbbc010(root, "binary"):
        yield sample.masks, read_w2(root, sample.name)


def synthetic_sets(n: int, seed: int):
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    for i in range(n):
        image, masks = synthetic_worms(seed=seed + i, render="brightfield")
        yield masks, image


ROWS = [
    ("worm length (skeleton px)", "length"),
    ("mean width (area/length, px)", "width"),
    ("widest width (2 x max EDT, px)", "widest"),
    ("area (px)", "area"),
    ("straightness (Feret/length)", "straight"),
    ("worms per image", "per_image_count"),
    ("overlap: pixels under >= 2 worms", "per_image_overlap"),
    ("overlap: worms touching another", "touching"),
    ("w2 1st percentile", "p1"),
    ("w2 99.8th percentile", "p99.8"),
    ("worm / background intensity", "worm/bg"),
]


def _cell(values: list[float], key: str) -> str:
    v = np.asarray(values)
    if key in ("touching",):
        return f"{v.mean():.2f}"
    q5, q50, q95 = np.percentile(v, (5, 50, 95))
    fmt = ".3f" if key in ("per_image_overlap", "straight", "worm/bg") else ".1f"
    return f"{v.mean():{fmt}} ({q5:{fmt}} / {q50:{fmt}} / {q95:{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REAL, help="BBBC010 train folder")
    parser.add_argument("--n", type=int, default=50, help="synthetic images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tables = {}
    for label, sets in (
        ("real", real_sets(args.real)),
        ("synthetic", synthetic_sets(args.n, args.seed)),
    ):
        stats: dict[str, list[float]] = {}
        for masks, image in sets:
            _merge(stats, worm_stats(masks))
            _merge(stats, intensity_stats(image, masks))
        tables[label] = stats
    n_real = len(tables["real"]["per_image_count"])
    n_syn = len(tables["synthetic"]["per_image_count"])
    print(
        f"| statistic: mean (5th / 50th / 95th pct) | real ({n_real} wells) | synthetic ({n_syn}) |"
    )
    print("| --- | --- | --- |")
    for name, key in ROWS:
        real, synthetic = _cell(tables["real"][key], key), _cell(tables["synthetic"][key], key)
        print(f"| {name} | {real} | {synthetic} |")
    print(
        f"| worms in total | {len(tables['real']['area'])} | {len(tables['synthetic']['area'])} |"
    )
    _timing(args.seed)


def _timing(seed: int, n: int = 10) -> None:
    """Generation time per 520 x 696 image on this machine (one thread, numpy/scipy only)."""
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    for render in ("brightfield", "binary"):
        synthetic_worms(seed=seed, render=render)  # warm-up
        start = time.perf_counter()
        for i in range(n):
            synthetic_worms(seed=seed + i, render=render)
        per = (time.perf_counter() - start) / n
        print(f"synthetic_worms(render={render!r}): {per * 1000:.0f} ms per 520 x 696 image")


if __name__ == "__main__":
    main()
