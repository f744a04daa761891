"""End-to-end speed: napari_semiconv.segment vs torchvision's maskrcnn_resnet50_fpn, same run.

Times one 696×520 image end to end (preprocessing, network, post-processing, masks pasted at full
size) at batch 1 and batched, for the given models and for torchvision's R50-FPN Mask R-CNN
(weights=None, same input size) measured in the same process, so the ratio holds on a noisy
machine. Reports peak memory (CUDA: max allocated; CPU: max RSS of the process).

Example:
    python benchmarks/speed.py --device cpu --threads 2 --models worms-brightfield --repeats 5
    (``--views 1,8``: also with test-time augmentation, batch 1)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_model(model, name: str, views: int, image, device, args) -> dict:
    """One row: ``segment`` of ``image`` at batch 1 with ``views``, and batched (views 1 only)."""
    from napari_semiconv.core.inference import segment, segment_batch

    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    t1 = _time(lambda: segment(model, image, views=views), device, args.repeats, args.warmup)
    peak = _peak_mb(device)
    row = {
        "model": name if views == 1 else f"{name}, {views} views",
        "backbone": model.config.backbone,
        "views": views,
        "batch1_ms": 1000 * statistics.median(t1),
    }
    if views == 1:
        tb = _time(
            lambda: segment_batch(model, [image] * args.batch),
            device,
            max(1, args.repeats // 2),
            1,
        )
        row[f"batch{args.batch}_ms_per_image"] = 1000 * statistics.median(tb) / args.batch
    row["peak_mb"] = peak
    row["worms_found"] = len(segment(model, image, views=views))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="worms-brightfield", help="comma-separated names or paths")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", default="", help="a TIFF to time on (default: synthetic 520×696)")
    p.add_argument("--json-out", default="")
    p.add_argument(
        "--capped-detections",
        type=int,
        default=20,
        help="also time R50 with at most this many detections (0: not)",
    )
    p.add_argument(
        "--views",
        default="1",
        help="comma-separated test-time augmentation settings to time each model with "
        "(segment(..., views=N); batched only at 1)",
    )
    args = p.parse_args(argv)

    import numpy as np
    import torch
    import torchvision

    from napari_semiconv.core.devices import resolve_device
    from napari_semiconv.core.inference import load_model
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.image:
        import tifffile

        image = tifffile.imread(args.image)
    else:
        image, _ = synthetic_worms(seed=0, shape=(520, 696), render="brightfield")
    rows = []

    # torchvision baseline: same input size, same end to end (normalise, forward, paste masks).
    # Untrained, its 100 detections (torchvision's default cap) all pass the 0.05 score
    # threshold, and pasting 100 masks is part of its time; a second row caps it at
    # --capped-detections (about what the bundled models find here), a stricter baseline.
    grey = np.asarray(image, dtype=np.float32)
    grey = (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6)
    x = torch.from_numpy(grey)[None].repeat(3, 1, 1)
    caps = [100] + ([args.capped_detections] if args.capped_detections else [])
    for cap in caps:
        torch.manual_seed(0)  # the same random weights in every run
        ref = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=520, max_size=704, num_classes=2,
            box_detections_per_img=cap,
        ).eval().to(device)  # fmt: skip

        def ref_once(n: int = 1, ref=ref) -> int:
            with torch.inference_mode():
                out = ref([x.to(device)] * n)
                for o in out:
                    (o["masks"] > 0.5).cpu()
            return len(out[0]["scores"])

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t1 = _time(ref_once, device, args.repeats, args.warmup)
        peak = _peak_mb(device)
        tb = _time(lambda: ref_once(args.batch), device, max(1, args.repeats // 2), 1)
        rows.append({
            "model": "torchvision maskrcnn_resnet50_fpn (weights=None)"
            + ("" if cap == 100 else f", at most {cap} detections"),
            "batch1_ms": 1000 * statistics.median(t1),
            f"batch{args.batch}_ms_per_image": 1000 * statistics.median(tb) / args.batch,
            "peak_mb": peak,
            "worms_found": ref_once(),
        })  # fmt: skip

    for name in [m for m in args.models.split(",") if m]:
        model = load_model(name, device=str(device))
        for views in [int(v) for v in args.views.split(",") if v]:
            rows.append(_time_model(model, name, views, image, device, args))
    base = rows[0]["batch1_ms"]
    for r in rows:
        r["ratio_vs_torchvision_r50"] = r["batch1_ms"] / base
        if len(caps) > 1:
            r["ratio_vs_capped_r50"] = r["batch1_ms"] / rows[1]["batch1_ms"]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {args.threads} threads")  # fmt: skip
    report = {"device": dev_name, "image_shape": list(np.shape(image)), "rows": rows}
    for r in rows:
        capped = f" (vs capped {r['ratio_vs_capped_r50']:.2f})" if len(caps) > 1 else ""
        ratio = f"ratio {r['ratio_vs_torchvision_r50']:.2f}{capped}"
        peak = f"peak {r['peak_mb']:.0f} MB"
        print(f"{r['model']:>70}: batch1 {r['batch1_ms']:.1f} ms  {ratio}  {peak}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report, fh, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
