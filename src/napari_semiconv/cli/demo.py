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
import shutil
import time
from pathlib import Path

from .experiment import DOTS_FIGURE, DOTS_JSON, run_dots

DEFAULT_MODEL = "worms-brightfield"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="segment the bundled sample with a bundled model and write all outputs",
        description="Segment the bundled synthetic bright-field well with the bundled model and "
        "write labels, instance stack, measurements, run JSON and an overlay PNG "
        "(--dots: the paper's dot-grid experiment instead).",
    )
    p.add_argument("--dots", action="store_true", help="run the dot-grid experiment instead")
    # no argparse defaults: --dots must tell a given --model or --device from none (see _run_dots)
    p.add_argument(
        "--model", help=f"model name or checkpoint path (default {DEFAULT_MODEL}); not with --dots"
    )
    p.add_argument(
        "--device",
        help="auto, cpu, cuda, cuda:N or mps (default auto); with --dots only cpu or auto",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="folder in which each run makes a new run-<time> folder for its files; with --dots, "
        f"the folder for {DOTS_FIGURE} and {DOTS_JSON}, earlier ones replaced "
        "(default demo-output)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the sample or the dots (default 0)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=100,
        help="with --dots: training steps per embedding (default 100); ignored otherwise",
    )
    p.set_defaults(run=run, interrupted_note="the unfinished run folder was removed")
    return p


def run(args: argparse.Namespace) -> int:
    if args.dots:
        return _run_dots(args)
    args.model = args.model or DEFAULT_MODEL
    args.device = args.device or "auto"
    from napari_semiconv.core.evaluation import evaluate
    from napari_semiconv.core.inference import load_model, run_info, segment
    from napari_semiconv.core.refine import postprocess_defaults_of
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    # a fresh folder per run: the demo never overwrites an earlier run's files
    out = Path(args.out) / time.strftime("run-%Y%m%d-%H%M%S")
    _check_out(out)
    model = load_model(args.model, device=args.device)
    render = "brightfield" if model.config.input_mode == "brightfield" else "binary"
    image, truth = synthetic_worms(seed=args.seed, render=render)
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
    info["image"] = {"path": str(out / "sample.tif"), "shape": list(image.shape)}
    scores = evaluate([(result.masks, result.scores)], [truth]).summary
    title = (
        f"{args.model}: {len(result)} worms ({len(truth)} true), AP {scores['AP']:.2f}, "
        f"avS {scores['avS']:.2f}, {seconds:.1f} s on {device}"
    )
    written = _write_run(out, image, result, info, title)
    print(title)
    for path in written.values():
        print(f"wrote {path}")
    print(
        f"replay: napari-semiconv predict {written['sample']} --from-run {written['run']} --out DIR"
    )
    return 0


def _check_out(run_dir: Path) -> None:
    """Refuse, before the work, a --out that is a file or a run folder that exists already."""
    parent = run_dir.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"--out {parent} is a file, not a folder")
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists (a run started this second); try again")


def _write_run(out: Path, image, result, info: dict, title: str) -> dict[str, Path]:
    """Write the run folder once the work is done; a failure or Ctrl-C while writing removes
    it, so no half-filled run folder is left."""
    import tifffile

    from napari_semiconv.core.export import write_run_outputs
    from napari_semiconv.core.overlay import write_overlay_png

    out.mkdir(parents=True, exist_ok=False)
    try:
        tifffile.imwrite(out / "sample.tif", image)
        files = write_run_outputs(out, "sample", result, info)
        overlay = write_overlay_png(
            out / "sample_overlay.png", image, result.masks, result.displacement, title
        )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # this call made the folder: all of it is ours
        raise
    return {"sample": out / "sample.tif", **files, "overlay": overlay}


def _run_dots(args: argparse.Namespace) -> int:
    _refuse_unused_for_dots(args)
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


def _refuse_unused_for_dots(args: argparse.Namespace) -> None:
    """--dots takes no model and trains on the CPU (core.experiments.dots_experiment): refuse
    a --model or a --device that it would silently ignore, before the work."""
    if args.model is not None:
        raise ValueError(
            f"--dots trains its own two small networks; --model {args.model} is not used: "
            "drop --model, or drop --dots to segment the sample with that model"
        )
    if args.device not in (None, "auto", "cpu"):
        raise ValueError(
            f"--dots trains its two small networks on the CPU (they are too small to gain "
            f"from a GPU); --device {args.device} is not used: drop --device"
        )
