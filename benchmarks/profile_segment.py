"""Where the time of one ``segment`` call goes: a stage-by-stage breakdown and torch's profile.

Stages (each ended by a device sync, so the sum is a little above an unsynchronised call):
normalise (host), the model's transform, backbone + FPN, the semi-conv
embedding head, RPN, RoI heads, the rest of the forward (mask pasting, Φ to displacements), and
what ``segment`` does after the network (masks to the host, clean-up). Then the same call under
torch.profiler: the operators taking the most device and host time.

Example (the GPU machine):
    python benchmarks/profile_segment.py --device cuda --models worms-brightfield,worms-binary
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="worms-brightfield,worms-binary")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args(argv)

    import torch

    from napari_semiconv.core.devices import resolve_device
    from napari_semiconv.core.inference import load_model, segment
    from napari_semiconv.core.preprocess import normalise
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    image, _ = synthetic_worms(seed=0, shape=(520, 696), render="brightfield")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    marks: dict[str, list[float]] = {}
    starts: dict[str, float] = {}
    for name in [m for m in args.models.split(",") if m]:
        model = load_model(name, device=str(device))
        marks.clear()

        def pre(stage):
            def hook(*_):
                sync()
                starts[stage] = time.perf_counter()

            return hook

        def post(stage):
            def hook(*_):
                sync()
                marks.setdefault(stage, []).append(time.perf_counter() - starts[stage])

            return hook

        handles = []
        for stage in ("transform", "backbone", "embedding_head", "rpn", "roi_heads"):
            module = getattr(model, stage, None)
            if module is not None:
                handles.append(module.register_forward_pre_hook(pre(stage)))
                handles.append(module.register_forward_hook(post(stage)))
        handles.append(model.register_forward_pre_hook(pre("forward")))
        handles.append(model.register_forward_hook(post("forward")))
        for _ in range(3):
            segment(model, image)
        marks.clear()
        totals, norms = [], []
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            normalise(image, model.config.input_mode)
            norms.append(time.perf_counter() - t)
            t = time.perf_counter()
            n = len(segment(model, image))
            sync()
            totals.append(time.perf_counter() - t)
        for h in handles:
            h.remove()
        med = {k: 1000 * statistics.median(v) for k, v in marks.items()}
        inner = sum(v for k, v in med.items() if k != "forward")
        total = 1000 * statistics.median(totals)
        print(f"\n== {name} on {device} ({n} worms): segment {total:.1f} ms (stages synced)")
        print(f"  normalise (host)            {1000 * statistics.median(norms):6.1f} ms")
        for k, v in med.items():
            if k != "forward":
                print(f"  {k:<27} {v:6.1f} ms")
        print(f"  rest of the forward         {med['forward'] - inner:6.1f} ms")
        print(f"  after the network           {total - med['forward']:6.1f} ms (incl. normalise)")
        if device.type == "cuda":  # would half-precision inference pay? (not used by segment)
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    for _ in range(2):
                        segment(model, image)
                    amp = []
                    for _ in range(args.repeats):
                        sync()
                        t = time.perf_counter()
                        n_amp = len(segment(model, image))
                        sync()
                        amp.append(time.perf_counter() - t)
                ms = 1000 * statistics.median(amp)
                print(f"  bf16 autocast: segment {ms:.1f} ms, {n_amp} worms")
            except Exception as exc:  # a measurement, not a feature: report and go on
                print(f"  bf16 autocast failed: {exc!r}")

        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(ProfilerActivity.CUDA)
        with profile(activities=acts) as prof:
            for _ in range(3):
                segment(model, image)
            sync()
        keys = prof.key_averages()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(keys.table(sort_by=sort, row_limit=args.profile_rows, max_name_column_width=50))
        print(keys.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=50))
    return 0


if __name__ == "__main__":
    sys.exit(main())
