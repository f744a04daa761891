"""Mask pasting: core.model.postprocess.paste_masks vs torchvision's per-detection loop.

Both paste the same N random 28×28 mask probabilities at the same boxes into a 520×696 image,
in the same process, alternating; reports the median time of each, their ratio and the largest
difference of the values. On a GPU the loop costs a few kernel launches per detection.

Example:
    python benchmarks/paste_masks.py --device cpu --threads 2 --detections 5,20,40,100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--detections", default="5,20,40,100")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from napari_semiconv.core.model.postprocess import paste_masks

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    height, width = 520, 696

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    rows = []
    for n in (int(x) for x in args.detections.split(",")):
        g = torch.Generator().manual_seed(n)
        masks = torch.rand(n, 1, 28, 28, generator=g).to(device)
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
        far = torch.minimum(
            xy + torch.rand(n, 2, generator=g) * 150 + 1, torch.tensor([width, height])
        )
        boxes = torch.cat([xy, far], dim=1).to(device)
        loop, batched = [], []
        for r in range(args.repeats + 1):
            pair = [
                (loop, lambda m=masks, b=boxes: paste_masks_in_image(m, b, (height, width))),
                (batched, lambda m=masks, b=boxes: paste_masks(m, b, (height, width))),
            ]
            for times, fn in pair if r % 2 else pair[::-1]:
                t = timed(fn)
                if r:  # the first round warms up
                    times.append(t)
        diff = (
            (
                paste_masks_in_image(masks, boxes, (height, width))
                - paste_masks(masks, boxes, (height, width))
            )
            .abs()
            .max()
        )
        row = {
            "detections": n,
            "torchvision_loop_ms": 1000 * statistics.median(loop),
            "batched_ms": 1000 * statistics.median(batched),
            "max_abs_difference": float(diff),
        }
        row["speedup"] = row["torchvision_loop_ms"] / row["batched_ms"]
        rows.append(row)
        print(
            f"{n:4d} detections: torchvision loop {row['torchvision_loop_ms']:8.2f} ms, "
            f"batched {row['batched_ms']:8.2f} ms (x{row['speedup']:.1f}), max diff {diff:.1e}",
            flush=True,
        )
    print(json.dumps({"device": str(device), "threads": args.threads, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
