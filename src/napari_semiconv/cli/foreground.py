"""`napari-semiconv train-foreground`: train the bright-field cascade's foreground U-Net.

The U-Net learns the union of the worm masks from bright-field images; the result is written as
one cascade checkpoint: the U-Net in front of a binary-input detector (``--detector``, e.g. the
bundled ``worms-binary``), which then segments bright-field images (``core.model.foreground``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from napari_semiconv.cli.common import add_data_arguments, split_wells


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-foreground",
        help="train a foreground U-Net and put it in front of a binary-input model",
        description="Train the bright-field cascade's foreground U-Net on --data (bright-field "
        "images + worm masks) and write the cascade (U-Net + --detector) to --out.",
    )
    add_data_arguments(p)
    p.add_argument("--detector", default="worms-binary", help="binary-input model (name or path)")
    p.add_argument("--out", required=True, help="cascade checkpoint to write (must not exist)")
    p.add_argument("--val-wells", help="BBBC010 wells to report the foreground IoU on")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    p.add_argument("--time-budget", type=float, help="seconds of training instead of --steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam, cosine decay to 0")
    p.add_argument(
        "--jitter",
        type=float,
        default=1.0,
        help="strength of the intensity jitter (gamma, gain, offset, noise), 0 to 1 (default 1)",
    )
    p.add_argument(
        "--foreground-from",
        help="cascade (name or path, e.g. worms-brightfield) whose U-Net to train further, "
        "instead of a new one; its architecture replaces --width/--depth/--max-width",
    )
    p.add_argument(
        "--foreground-threshold",
        type=float,
        help="a pixel is worm where the U-Net's probability exceeds this (default: that of "
        "--foreground-from's cascade, else 0.5)",
    )
    p.add_argument("--width", type=int, default=8, help="first-level channels of a new U-Net")
    p.add_argument("--depth", type=int, default=4, help="2x poolings of a new U-Net")
    p.add_argument("--max-width", type=int, default=64, help="channel cap of a new U-Net")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast (default: if it pays)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from napari_semiconv.core.atomic import check_writable_target
    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.devices import bf16_autocast_pays, resolve_device
    from napari_semiconv.core.foreground_training import (
        attach_foreground,
        check_detector,
        foreground_iou,
        foreground_of,
        train_foreground_steps,
    )
    from napari_semiconv.core.model.foreground import (
        FOREGROUND_THRESHOLD,
        ForegroundConfig,
        build_foreground_net,
    )
    from napari_semiconv.core.model_store import read_checkpoint
    from napari_semiconv.core.training_data import read_samples

    out = Path(args.out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out (nothing is overwritten)")
    check_writable_target(out)  # a missing folder is refused now, not after the training
    if args.input not in (None, "brightfield"):
        raise ValueError("the foreground U-Net learns from bright-field images: drop --input")
    detector = read_checkpoint(args.detector)
    check_detector(detector)
    # a cascade to start from is read (and refused if it is none) before any training
    source = read_checkpoint(args.foreground_from) if args.foreground_from else None
    start = foreground_of(source) if source is not None else None
    # the cut belongs to the U-Net's weights: one trained further keeps its cascade's
    threshold = args.foreground_threshold
    if threshold is None:
        threshold = (
            source.config.foreground_threshold if source is not None else FOREGROUND_THRESHOLD
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"--foreground-threshold must be in (0, 1), got {threshold}")
    wells, val_wells = split_wells(args.wells), split_wells(args.val_wells)
    both = sorted(set(wells or ()) & set(val_wells or ()))
    if both:
        raise ValueError(f"wells in both --wells and --val-wells: {both}")
    train = read_samples(args.data, args.layout, "brightfield", wells)
    if val_wells and wells is None:
        train = [s for s in train if s.name not in set(val_wells)]
    val = read_samples(args.data, args.layout, "brightfield", val_wells) if val_wells else []
    device = resolve_device(args.device)
    amp = not args.no_amp and bf16_autocast_pays(device)
    torch.manual_seed(args.seed)
    net = (
        start
        if start is not None
        else build_foreground_net(ForegroundConfig(args.width, args.depth, args.max_width))
    )
    config = net.config
    steps = None if args.time_budget else args.steps
    print(f"training on {len(train)} image(s), {device}, bf16 autocast {'on' if amp else 'off'}")
    last = None
    for last in train_foreground_steps(
        net, train, steps=steps, time_budget=args.time_budget, batch_size=args.batch_size,
        crop=args.crop, lr=args.lr, seed=args.seed, device=device, amp=amp, jitter=args.jitter,
    ):  # fmt: skip
        if last.step % 50 == 0 or last.step == 1:
            print(
                f"[{last.step}/{last.total or '-'}] loss={last.loss:.4f} {last.seconds:.0f}s",
                flush=True,
            )
    net = net.cpu().eval()
    ious = foreground_iou(net, val, threshold) if val else []
    if ious:
        print(f"foreground IoU on {len(val)} validation image(s): {sum(ious) / len(ious):.3f}")
    model = attach_foreground(detector, net, threshold)
    model.card.update(
        name=out.stem,
        description=f"bright-field cascade: foreground U-Net + {args.detector}",
        detector=args.detector,
        foreground_training={
            "data": str(args.data),
            "images": [s.name for s in train],
            "validation": [s.name for s in val],
            "validation_iou": [round(v, 4) for v in ious],
            "steps": last.step if last else 0,
            "seconds": round(last.seconds, 1) if last else 0.0,
            "architecture": config.to_dict(),
            "start": f"the U-Net of {args.foreground_from}" if args.foreground_from else "new",
            "threshold": threshold,
            "recipe": f"Adam lr {args.lr} cosine, batch {args.batch_size} crops of {args.crop} px,"
            f" core.data.augment (flips/turns, intensity jitter {args.jitter}), BCE + soft Dice,"
            f" bf16 {amp}",
            "command": "napari-semiconv " + shlex.join(getattr(args, "argv", sys.argv[1:])),
        },
    )
    save_checkpoint(out, model, model.card, overwrite=False)
    print(f"wrote {out}")
    return 0
