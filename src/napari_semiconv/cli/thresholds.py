"""`napari-semiconv tune-thresholds`: choose a model's thresholds on annotated images and save
a copy of the model that uses them by default (``core.threshold_search``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_semiconv.cli.common import add_data_arguments, split_wells
from napari_semiconv.core.refine import FOREGROUND_CUT_GRID, SEARCH_GRID


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"comma-separated numbers, got {text!r}") from exc


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune-thresholds",
        help="choose a model's score/mask/overlap thresholds (and a cascade's foreground cut) "
        "on annotated images",
        description="Segment every image of --data once per mask threshold, score every "
        "combination of the thresholds against the labels (COCO mask AP, avS) and save a copy of "
        "the model (--out) whose card records the best as its defaults. Use images the model was "
        "trained on or set aside for this, not those you will judge it on.",
    )
    p.add_argument("--model", required=True, help="model name (see `models`) or checkpoint path")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="the new checkpoint (.pt); never overwritten")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--metric", choices=["avS", "AP"], default="avS", help="choose by this")
    for flag, values in zip(("--score-thresholds", "--mask-thresholds", "--max-overlaps"),
                            SEARCH_GRID, strict=True):  # fmt: skip
        p.add_argument(flag, type=_floats, default=list(values), help="comma-separated")
    p.add_argument(
        "--foreground-cuts",
        type=_floats,
        help="a bright-field cascade's U-Net cuts to try (the network runs again for each; "
        f"default: {','.join(map(str, FOREGROUND_CUT_GRID))} and the model's own)",
    )
    p.add_argument("--json", action="store_true", help="end with the chosen row as one JSON line")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from napari_semiconv.core.atomic import check_writable_target
    from napari_semiconv.core.checkpoint import load_checkpoint, save_checkpoint
    from napari_semiconv.core.foreground_training import set_foreground_threshold
    from napari_semiconv.core.inference import load_model
    from napari_semiconv.core.model.run_modes import check_foreground_cut
    from napari_semiconv.core.refine import POSTPROCESS_KEYS, postprocess_defaults_of
    from napari_semiconv.core.threshold_search import (
        best_setting,
        search_thresholds,
        with_thresholds,
    )
    from napari_semiconv.core.training_data import read_samples

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"{out} exists; choose another --out (a model is never overwritten)")
    check_writable_target(out)  # a missing folder is refused now, not after the search
    model = load_model(args.model, device=args.device)
    mode = model.config.input_mode
    if args.input and args.input != mode:
        raise ValueError(f"--input {args.input} does not match the model's input mode {mode!r}")
    cascade = bool(model.config.foreground_width)
    cuts = args.foreground_cuts
    for cut in cuts or ():  # refused before any image is read
        check_foreground_cut(model, cut, "--foreground-cuts")
    if cascade and cuts is None:
        cuts = sorted({*FOREGROUND_CUT_GRID, model.config.foreground_threshold})
    samples = read_samples(args.data, args.layout, mode, split_wells(args.wells))
    before = postprocess_defaults_of(model.config.postprocess_kind, model.card)
    if cascade:
        before["foreground_threshold"] = model.config.foreground_threshold
    print(f"{len(samples)} annotated image(s); the model's defaults now: {before}", flush=True)
    rows = search_thresholds(
        model,
        samples,
        args.score_thresholds,
        args.mask_thresholds,
        args.max_overlaps,
        progress=lambda done, total: print(f"[{done}/{total}] images segmented", flush=True),
        foreground_cuts=cuts,
    )
    print(("  cut " if cascade else "") + "score  mask  overlap      AP     avS  found/true")
    for r in rows:
        ap = "   -  " if r["AP"] is None else f"{r['AP']:.3f}"
        avs = "   -  " if r["avS"] is None else f"{r['avS']:.3f}"
        cut = f"{r['foreground_threshold']:5.2f} " if cascade else ""
        print(
            f"{cut}{r['score_threshold']:5.2f} {r['mask_threshold']:5.2f} {r['max_overlap']:8.2f} "
            f"{ap:>7} {avs:>7}  {r['n_pred']}/{r['n_true']}"
        )
    best = best_setting(rows, args.metric)
    if cascade:  # the chosen cut is the copy's own: its config carries it
        set_foreground_threshold(model, best["foreground_threshold"])
    card = with_thresholds(model.card, best, args.metric, [s.name for s in samples])
    card["name"] = out.stem
    # an fp16 file (a bundled model) stays fp16: the copy is as small as the original
    half = load_checkpoint(model.source["path"]).half
    save_checkpoint(out, model.cpu(), card, half=half, overwrite=False)
    chosen = {k: best[k] for k in (*POSTPROCESS_KEYS, "foreground_threshold") if k in best}
    print(f"best by {args.metric}: {chosen} ({args.metric} {best[args.metric]:.3f}); wrote {out}")
    if args.json:
        print(json.dumps({**best, "out": str(out)}))
    return 0
