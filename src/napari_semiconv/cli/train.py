"""`napari-semiconv train`: train or fine-tune a model from a data folder, printing progress.

Runs unchanged under ``torchrun --nproc_per_node=N -m napari_semiconv train ...`` (one process per
GPU; only rank 0 prints and writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from napari_semiconv.cli.common import add_data_arguments, split_wells


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a semi-convolutional Mask R-CNN",
        description="Train a model on BBBC010 wells or a folder of images + labels; checkpoints "
        "are written atomically to --out (and --out with .best.pt for the best validation AP).",
    )
    add_data_arguments(p, required=False)
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. worms.pt)")
    p.add_argument("--base", help="fine-tune from this model (name or checkpoint path)")
    p.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--no-semiconv", action="store_true", help="plain Mask R-CNN baseline")
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a ModelConfig field of a new model, e.g. fpn_channels=256 (repeatable)",
    )
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument(
        "--time-budget",
        type=float,
        help="stop after this many seconds of training (the schedule decays over the budget)",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--schedule", choices=["step", "cosine"], default="step")
    p.add_argument("--warmup", type=int, default=100, help="warm-up iterations (default 100)")
    p.add_argument("--crop", type=int, default=256, help="training crop in pixels; 0 = none")
    p.add_argument("--no-augment", action="store_true", help="no flips/transposes")
    p.add_argument("--heads-only", action="store_true", help="freeze the backbone and FPN")
    p.add_argument(
        "--synthetic", type=float, default=0.0, metavar="F", help="fraction of synthetic worms"
    )
    p.add_argument("--val-wells", help="BBBC010 validation wells, e.g. C03,C04")
    p.add_argument("--folds", type=int, help="k-fold cross-validation over wells: K folds")
    p.add_argument("--fold", type=int, help="with --folds: which fold (0-based) to train")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: at end)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue --out from its last step")
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="no bf16 autocast (default: on for CUDA and for CPUs with AMX/AVX512-BF16)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes preparing the next batches while one trains (GPU runs; default 0)",
    )
    p.set_defaults(run=run)
    return p


def _model_config(args: argparse.Namespace):
    from napari_semiconv.core.checkpoint import load_checkpoint
    from napari_semiconv.core.model.config import ModelConfig
    from napari_semiconv.core.model_store import resolve_model_path

    if args.base:
        # the architecture is the base model's; only semiconv may change (two-stage schedule)
        base = load_checkpoint(resolve_model_path(args.base)[0]).config
        if args.backbone and args.backbone != base.backbone:
            raise ValueError(f"--backbone {args.backbone} differs from the base's {base.backbone}")
        if args.model_option:
            raise ValueError("--model-option applies to new models; --base fixes the architecture")
        if args.input and args.input != base.input_mode:
            raise ValueError(f"--input {args.input} differs from the base's {base.input_mode}")
        d = base.to_dict()
        d["semiconv"] = not args.no_semiconv
        return ModelConfig.from_dict(d)
    options = {
        "backbone": args.backbone or "resnet18",
        "semiconv": not args.no_semiconv,
        "input_mode": args.input or "binary",
    }
    options.update(_parse_options(args.model_option))
    return ModelConfig.from_dict(options)


def _parse_options(items: list[str]) -> dict:
    """["fpn_channels=256", "norm=group"] -> {"fpn_channels": 256, "norm": "group"}."""
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text  # a bare word such as group
    return options


def run(args: argparse.Namespace) -> int:
    from napari_semiconv.core.training import TrainConfig, TrainingDiverged, fold_config, train

    if args.data is None and args.synthetic < 1.0:
        raise ValueError("--data is required unless --synthetic 1.0 (synthetic worms only)")
    if (args.folds is None) != (args.fold is None):
        raise ValueError("--folds K and --fold I go together")
    model = _model_config(args)
    config = TrainConfig(
        model=model,
        data_root=args.data,
        layout=args.layout,
        wells=split_wells(args.wells),
        val_wells=split_wells(args.val_wells),
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        warmup_iters=args.warmup,
        crop=args.crop or None,
        augment=not args.no_augment,
        synthetic_fraction=args.synthetic,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        out=args.out,
        resume=args.resume,
        base=args.base,
        train_heads_only=args.heads_only,
        amp=not args.no_amp,
        device=args.device,
        seed=args.seed,
        time_budget_s=args.time_budget,
        data_workers=args.data_workers,
    )
    if args.folds is not None:
        if not 0 <= args.fold < args.folds:
            raise ValueError(f"--fold must be in 0..{args.folds - 1}, got {args.fold}")
        config = fold_config(config, args.folds, args.fold)
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        for event in train(config):
            if main:
                print(_format(event), flush=True)
    except TrainingDiverged as exc:
        print(f"napari-semiconv train: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _format(event) -> str:
    head = f"[{event.iteration}/{event.total}]"
    if event.phase == "train":
        if not event.losses:
            return f"{head} {event.message}"
        losses = " ".join(f"{k}={v:.4f}" for k, v in event.losses.items())
        return (
            f"{head} {losses} lr={event.lr:.2e} {event.images_per_s:.2f} img/s "
            f"eta {event.eta_s:.0f}s"
        )
    if event.phase == "val":
        metrics = event.metrics or {}
        shown = " ".join(
            f"{k}={metrics[k]:.3f}"
            for k in ("AP", "AP50", "AP75", "avS")
            if metrics.get(k) is not None
        )
        return f"{head} validation {shown}"
    if event.phase == "checkpoint":
        return f"{head} saved {event.checkpoint}"
    return f"{head} done"
