"""CPU training-step time: one speed-up at a time, against the code without it.

``--compare roi_align``: the sparse RoIAlign (core.model.roi_align) vs torchvision's kernel.
``--compare amp``: bf16 autocast (on CPUs with AMX / AVX512-BF16) vs float32.

Both variants run in the same process on the same batches (BBBC010 training wells or, without
them, synthetic worms), alternating, so their ratio holds on a noisy machine. The model, the
batches and the seeds are identical; only the compared part differs. Measured for whole-model
training and for heads-only fine-tuning (the Fine-tune widget's CPU default). For roi_align the
heads-only row is a control: with the backbone frozen no RoIAlign input needs a gradient, so
both variants run torchvision's kernel there and the ratio shows the noise of the measurement.

Examples (what docs/benchmarks.md reports):
    python benchmarks/train_step_cpu.py --data ../shared/data/bbbc010/train --threads 2 \
        --steps 6 --out docs/train_step_cpu.json
    python benchmarks/train_step_cpu.py --compare amp --data ../shared/data/bbbc010/train \
        --threads 2 --steps 6 --out docs/train_step_cpu_amp.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="BBBC010 train folder; synthetic worms if absent")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and mode")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--compare", choices=("roi_align", "amp"), default="roi_align")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import napari_semiconv.core.model.roi_align as fast
    from napari_semiconv.core.model.config import ModelConfig
    from napari_semiconv.core.training import train
    from napari_semiconv.core.training_config import TrainConfig

    sparse = fast.roi_align_sparse

    def torchvision_kernel(features, rois, size, scale, ratio, aligned=False):
        return fast._tv_roi_align(features, rois, size, scale, ratio, aligned)

    import napari_semiconv.core.training as training

    use_data = bool(args.data) and Path(args.data).is_dir()
    # (new, old) variant names; "new" is the code as shipped
    new, old = ("sparse", "torchvision") if args.compare == "roi_align" else ("bf16", "float32")
    if args.compare == "amp" and not training.bf16_autocast_pays(torch.device("cpu")):
        print("note: this CPU has no native bf16, so the trainer would not use autocast here")
        training.bf16_autocast_pays = lambda device: True  # measure it anyway
    results: dict[str, dict] = {}
    for mode in ("everything", "heads-only"):
        times: dict[str, list[float]] = {new: [], old: []}
        # one generator per variant, stepped alternately: the same batches in the same order
        runs = {}
        for variant in times:
            config = TrainConfig(
                model=ModelConfig(backbone=args.backbone, input_mode="binary"),
                data_root=args.data if use_data else None,
                synthetic_fraction=0.0 if use_data else 1.0,
                iterations=args.steps + 1,
                batch_size=args.batch_size,
                crop=args.crop,
                device="cpu",
                warmup_iters=1,
                train_heads_only=mode == "heads-only",
                amp=variant == "bf16",  # the roi_align comparison runs in float32
            )
            runs[variant] = train(config)
            next(runs[variant])  # the "starting" event: model built, data loaded
        for step in range(args.steps + 1):
            # ABBA order: whichever runs second in a pair tends to be faster (warm caches)
            order = list(runs.items()) if step % 2 == 0 else list(runs.items())[::-1]
            for variant, run in order:
                fast.roi_align_sparse = torchvision_kernel if variant == "torchvision" else sparse
                start = time.perf_counter()
                next(run)
                if step:  # the first step warms up allocators and caches
                    times[variant].append(time.perf_counter() - start)
        for run in runs.values():
            run.close()
        fast.roi_align_sparse = sparse
        med = {v: statistics.median(t) for v, t in times.items()}
        results[mode] = {
            "median_step_s": med,
            "steps_s": times,
            "speedup": med[old] / med[new],
        }
        print(
            f"{mode}: {new} {med[new]:.2f} s/step, {old} {med[old]:.2f} "
            f"s/step, speed-up x{results[mode]['speedup']:.2f}",
            flush=True,
        )
    record = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "compare": args.compare,
        "cpu_native_bf16": bool(
            torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
        ),
        "data": "BBBC010 training wells" if use_data else "synthetic worms",
        "batch_size": args.batch_size,
        "crop": args.crop,
        "backbone": args.backbone,
        "results": results,
    }
    if args.out:
        from napari_semiconv.core.atomic import atomic_write_bytes

        text = json.dumps(record, indent=2) + "\n"
        atomic_write_bytes(args.out, text.encode(), overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
