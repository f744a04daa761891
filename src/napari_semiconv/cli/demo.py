"""`napari-semiconv demo [--out DIR] [--model NAME] [--dots]`: the main job, offline.

By default it segments the bundled sample (the synthetic bright-field well that napari's
*File → Open Sample → Synthetic worms (bright-field)* shows) with the bundled model
``worms-brightfield`` and writes, into a new ``run-<time>`` folder under ``--out``, the same
files as ``napari-semiconv predict`` (label TIFF, instance stack, measurements CSV, run JSON),
the sample image itself, and an overlay PNG (worm outlines and displacement arrows). The
sample's true worms are known, so it also prints the accuracy against them.

``demo --dots`` runs the dot-grid experiment of sec. 4.1 instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .experiment import add_dots_arguments, run_dots


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="segment the bundled sample with a bundled model and write all outputs",
        description="Segment the bundled synthetic bright-field well with the bundled model and "
        "write labels, instance stack, measurements, run JSON and an overlay PNG "
        "(--dots: the paper's dot-grid experiment instead).",
    )
    p.add_argument("--dots", action="store_true", help="run the dot-grid experiment instead")
    p.add_argument("--model", default="worms-brightfield", help="model name or checkpoint path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_dots_arguments(p, default_out=Path("demo-output"))
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.dots:
        return _run_dots(args)
    import tifffile

    from napari_semiconv.core.evaluation import evaluate
    from napari_semiconv.core.export import write_run_outputs
    from napari_semiconv.core.inference import load_model, run_info, segment
    from napari_semiconv.core.overlay import write_overlay_png
    from napari_semiconv.core.refine import postprocess_defaults_of
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    model = load_model(args.model, device=args.device)
    render = "brightfield" if model.config.input_mode == "brightfield" else "binary"
    image, truth = synthetic_worms(seed=args.seed, render=render)
    # a fresh folder per run: the demo never overwrites an earlier run's files
    out = Path(args.out) / time.strftime("run-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    sample_path = out / "sample.tif"
    tifffile.imwrite(sample_path, image)
    settings = {
        **postprocess_defaults_of(model.config.postprocess_kind, model.card),
        # a cascade's U-Net cut, recorded as a number as predict records it
        "foreground_threshold": (
            model.config.foreground_threshold if model.config.foreground_width else None
        ),
        "divide_touching": True,
        "tile_size": None,
        "overlap": 64,
        "views": 1,
    }
    started = time.perf_counter()
    result = segment(model, image, **settings)
    seconds = time.perf_counter() - started
    device = str(next(model.parameters()).device)
    info = run_info(model, settings, device)
    info["image"] = {"path": str(sample_path), "shape": list(image.shape)}
    files = write_run_outputs(out, "sample", result, info)
    scores = evaluate([(result.masks, result.scores)], [truth]).summary
    title = (
        f"{args.model}: {len(result)} worms ({len(truth)} true), AP {scores['AP']:.2f}, "
        f"avS {scores['avS']:.2f}, {seconds:.1f} s on {device}"
    )
    overlay = write_overlay_png(
        out / "sample_overlay.png", image, result.masks, result.displacement, title
    )
    print(title)
    for path in [sample_path, *files.values(), overlay]:
        print(f"wrote {path}")
    print(f"replay: napari-semiconv predict {sample_path} --from-run {files['run']} --out DIR")
    return 0


def _run_dots(args: argparse.Namespace) -> int:
    out = Path(args.out)
    summary = run_dots(out, args.seed, args.steps)
    print(
        f"dot grid ({summary['n_dots']} identical dots): adjusted Rand index "
        f"conv {summary['conv_ari']:.3f}, semi-conv {summary['semiconv_ari']:.3f} "
        f"({summary['seconds']:.1f} s)"
    )
    print(f"wrote {summary['figure']}")
    print(f"wrote {summary['json']}")
    return 0
