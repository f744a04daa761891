"""Turn a trained checkpoint into a bundled model: fp16 weights, no training state, a model card
with the cross-validation metrics, and its sha256 recorded in the package's registry.

A bright-field cascade takes a further-trained detector without training its U-Net again:
    python benchmarks/make_bundled.py swap-detector worms-brightfield runs/cpu7/binary.fold0.pt \
        cascade.pt    # then `bundle cascade.pt worms-brightfield --metrics ...`
and its U-Net's cut (ModelConfig.foreground_threshold) can be set the same way:
    python benchmarks/make_bundled.py set-cut worms-brightfield 0.6 cascade.pt

Two steps, because the GPU machine returns files of at most 16 MB:
    # on the training machine: strip the optimizer state and halve the weights
    python benchmarks/make_bundled.py strip runs/cv/binary-semiconv-fold0.pt worms-binary.pt
    # here: write src/napari_semiconv/models/<name>.pt + registry.json
    python benchmarks/make_bundled.py bundle worms-binary.pt worms-binary \
        --crossval docs/crossval.json --recipe binary-semiconv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_semiconv.core.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    sha256_file,
)
from napari_semiconv.core.foreground_training import replace_detector, with_foreground_threshold
from napari_semiconv.core.model_store import BUNDLED_DIR, read_checkpoint

MAX_BYTES = 30 * 1024 * 1024


def strip(src: str, dst: str) -> Path:
    ckpt = load_checkpoint(src)
    model = model_from_checkpoint(ckpt, device="cpu")
    return save_checkpoint(dst, model, ckpt.card, train_state=None, half=True)


def swap_detector(cascade: str, detector: str, dst: str) -> Path:
    """Write ``cascade`` (a name or path) with ``detector``'s weights, its U-Net unchanged."""
    model = replace_detector(read_checkpoint(cascade), read_checkpoint(detector))
    return save_checkpoint(dst, model, model.card, train_state=None, overwrite=False)


def set_cut(cascade: str, threshold: float, dst: str) -> Path:
    """Write ``cascade`` (a name or path) with its U-Net's cut at ``threshold``."""
    model = with_foreground_threshold(read_checkpoint(cascade), threshold)
    return save_checkpoint(dst, model, model.card, train_state=None, overwrite=False)


def bundle(
    src: str,
    name: str,
    crossval: str | None,
    recipe: str | None,
    note: str | None = None,
    metrics: str | None = None,
    metrics_note: str | None = None,
) -> Path:
    ckpt = load_checkpoint(src)
    model = model_from_checkpoint(ckpt, device="cpu")
    card = dict(ckpt.card)
    card["name"] = name
    if crossval:
        report = json.loads(Path(crossval).read_text())
        card["cross_validation"] = {
            "recipe": recipe,
            "protocol": f"{report['folds']}-fold CV over the 50 BBBC010 training wells",
            "device": report.get("device"),
            "metrics": report["summary"].get(recipe, {}),
        }
    if note:  # how this file came to be, where it differs from the recipe cross-validated
        card["history"] = note
    if metrics:  # the trainer's own validation figures, replaced by a later evaluation
        card["metrics"] = json.loads(Path(metrics).read_text().strip().splitlines()[-1])
        card["metrics_protocol"] = metrics_note or f"from {Path(metrics).name}"
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    dst = BUNDLED_DIR / f"{name}.pt"
    save_checkpoint(dst, model, card, train_state=None, half=True, overwrite=True)
    size = dst.stat().st_size
    if size > MAX_BYTES:
        dst.unlink()
        raise SystemExit(f"{dst} is {size / 2**20:.1f} MB, over the 30 MB limit for bundled models")
    reg_path = BUNDLED_DIR / "registry.json"
    reg = json.loads(reg_path.read_text()) if reg_path.is_file() else {}
    reg[name] = {
        "file": dst.name,
        "sha256": sha256_file(dst),
        "input_mode": ckpt.config.input_mode,
        "backbone": ckpt.config.backbone,
        "bytes": size,
    }
    reg_path.write_text(json.dumps(reg, indent=2, sort_keys=True) + "\n")
    print(f"{dst}: {size / 2**20:.1f} MB, sha256 {reg[name]['sha256']}")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("strip")
    s.add_argument("src")
    s.add_argument("dst")
    w = sub.add_parser("swap-detector", help="a cascade with another binary-input detector")
    w.add_argument("cascade", help="cascade name or path, e.g. worms-brightfield")
    w.add_argument("detector", help="binary-input model, name or path")
    w.add_argument("dst", help="checkpoint to write (must not exist)")
    c = sub.add_parser("set-cut", help="a cascade with another U-Net cut")
    c.add_argument("cascade", help="cascade name or path, e.g. worms-brightfield")
    c.add_argument("threshold", type=float, help="the U-Net's cut, in (0, 1)")
    c.add_argument("dst", help="checkpoint to write (must not exist)")
    b = sub.add_parser("bundle")
    b.add_argument("src")
    b.add_argument("name")
    b.add_argument("--crossval")
    b.add_argument("--recipe")
    b.add_argument("--note", help="the model's history, recorded in its card")
    b.add_argument(
        "--metrics",
        help="replace the card's metrics with this file's last line (`evaluate --json` output)",
    )
    b.add_argument("--metrics-note", help="how --metrics was measured, recorded in the card")
    args = p.parse_args(argv)
    if args.cmd == "strip":
        print(strip(args.src, args.dst))
    elif args.cmd == "swap-detector":
        print(swap_detector(args.cascade, args.detector, args.dst))
    elif args.cmd == "set-cut":
        print(set_cut(args.cascade, args.threshold, args.dst))
    else:
        bundle(
            args.src,
            args.name,
            args.crossval,
            args.recipe,
            args.note,
            args.metrics,
            args.metrics_note,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
