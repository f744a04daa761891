"""`napari-semiconv train`: train or fine-tune a model from a data folder, printing progress.

Runs unchanged under ``torchrun --nproc_per_node=N -m napari_semiconv train ...`` (one process per
GPU; only rank 0 prints and writes).
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--iterations", type=int, help="training steps (default 1000)")
    p.add_argument(
        "--time-budget",
        type=float,
        help="stop after this many seconds of training (the schedule decays over the budget); "
        "with --resume, seconds more: the schedule goes on from where it stopped",
    )
    p.add_argument("--batch-size", type=int, help="images per step and process (default 4)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.01)")
    p.add_argument("--schedule", choices=["step", "cosine"], help="lr decay (default step)")
    p.add_argument(
        "--warmup", type=int, help="warm-up iterations (default 100; at most a tenth of the run)"
    )
    p.add_argument("--crop", type=int, help="training crop in pixels; 0 = none (default 256)")
    p.add_argument("--no-augment", action="store_true", help="no flips/transposes")
    p.add_argument("--heads-only", action="store_true", help="freeze the backbone and FPN")
    p.add_argument(
        "--synthetic", type=float, metavar="F", help="fraction of synthetic worms (default 0)"
    )
    p.add_argument("--val-wells", help="BBBC010 validation wells, e.g. C03,C04")
    p.add_argument("--folds", type=int, help="k-fold cross-validation over wells: K folds")
    p.add_argument("--fold", type=int, help="with --folds: which fold (0-based) to train")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: at end)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --out from its last step, with the model and recipe it records (a flag "
        "that contradicts them is refused)",
    )
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="no bf16 autocast (default: on for CUDA and for CPUs with AMX/AVX512-BF16)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes preparing the next batches while one trains (GPU runs; default 0)",
    )
    p.set_defaults(
        run=run,
        interrupted_note="the last checkpoint saved (if any) is kept whole; add --resume to the "
        "same command to go on from it",
    )
    return p


# recipe entries a checkpoint's card records -> (argparse dest, flag, default of a new run)
RECIPE = {
    "iterations": ("iterations", "--iterations", 1000),
    "batch_size": ("batch_size", "--batch-size", 4),
    "lr": ("lr", "--lr", 0.01),
    "schedule": ("schedule", "--schedule", "step"),
    "warmup_iters": ("warmup", "--warmup", 100),
    "crop": ("crop", "--crop", 256),
    "synthetic_fraction": ("synthetic", "--synthetic", 0.0),
    "seed": ("seed", "--seed", 0),
    "base": ("base", "--base", None),
}
# recipe switches -> (argparse dest, flag, the entry's value when the flag is given)
SWITCHES = {
    "augment": ("no_augment", "--no-augment", False),
    "train_heads_only": ("heads_only", "--heads-only", True),
    "amp": ("no_amp", "--no-amp", False),
}


def _model_config(args: argparse.Namespace):
    from napari_semiconv.core.model.config import ModelConfig
    from napari_semiconv.core.model_store import read_checkpoint

    if args.base:
        # the architecture is the base model's; only semiconv may change (two-stage schedule)
        base = read_checkpoint(args.base).config
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
    try:
        return ModelConfig.from_dict(options)
    except (ValueError, TypeError) as exc:  # a value out of range: only options can give one
        raise ValueError(f"--model-option: {exc}") from None


def _parse_options(items: list[str]) -> dict:
    """["fpn_channels=256", "norm=group"] -> {"fpn_channels": 256, "norm": "group"}, each value
    of its setting's type; a key that is no setting or a value of another type is refused."""
    from napari_semiconv.core.model.config import setting_from_text, setting_names

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model-option expects KEY=VALUE, got {item!r}")
        if key not in setting_names():
            raise ValueError(
                f"--model-option {key}: no such model setting; valid keys: "
                f"{', '.join(setting_names())}"
            )
        try:
            options[key] = setting_from_text(key, text)
        except ValueError as exc:
            raise ValueError(f"--model-option {item}: {exc}") from None
    return options


def _given_recipe(args: argparse.Namespace) -> dict[str, tuple[str, object]]:
    """The recipe entries set on the command line: {entry: (flag, value as recorded)}."""
    given = {}
    for key, (dest, flag, _) in RECIPE.items():
        value = getattr(args, dest)
        if value is not None:
            given[key] = (flag, (value or None) if key == "crop" else value)  # --crop 0: none
    for key, (dest, flag, value) in SWITCHES.items():
        if getattr(args, dest):
            given[key] = (flag, value)
    return given


def _recipe(args: argparse.Namespace, recorded: dict | None, out: str) -> dict:
    """The run's recipe: the command line's values, else (resuming) the checkpoint's recorded
    ones, else the defaults. Resuming, a value that contradicts the recorded one is refused:
    the schedule and the batches of every step depend on them."""
    recipe = {key: default for key, (_, _, default) in RECIPE.items()}
    recipe.update({key: not value for key, (_, _, value) in SWITCHES.items()})
    if recorded:
        recipe.update({key: recorded[key] for key in recipe if key in recorded})
    for key, (flag, value) in _given_recipe(args).items():
        if recorded and key in recorded and recorded[key] != value:
            shown = "" if key in SWITCHES else f" {_shown(key, value)}"
            raise ValueError(
                f"{flag}{shown} contradicts {out}, which was trained with {key} "
                f"{_shown(key, recorded[key])}; drop {flag} to resume with the checkpoint's"
            )
        recipe[key] = value
    return recipe


def _shown(key: str, value: object) -> str:
    """A recipe value as the command line writes it."""
    if key == "crop" and value is None:
        return "0 (no crop)"
    return "none" if value is None else str(value)


def _resumed_model(args: argparse.Namespace, model, out: str):
    """The checkpoint's model config ``model``, after refusing flags that describe another."""
    from napari_semiconv.core.model.config import ModelConfig

    # model setting -> (the flag as given, its value)
    asked = {
        key: (f"--model-option {key}={value}", value)
        for key, value in _parse_options(args.model_option).items()
    }
    if args.input:
        asked["input_mode"] = (f"--input {args.input}", args.input)
    if args.backbone:
        asked["backbone"] = (f"--backbone {args.backbone}", args.backbone)
    if args.no_semiconv:
        asked["semiconv"] = ("--no-semiconv", False)
    recorded = model.to_dict()
    for key, (flag, value) in asked.items():
        if key not in recorded:
            raise ValueError(f"{flag}: a model has no setting {key!r}")
        if ModelConfig.from_dict({**recorded, key: value}).to_dict()[key] != recorded[key]:
            raise ValueError(
                f"{flag} contradicts {out}, whose model has {key} {recorded[key]!r}; "
                f"drop {flag.split()[0]} to resume with the checkpoint's"
            )
    return model


def _resumed_data(args: argparse.Namespace, recorded: dict, out: str) -> None:
    """Fill --data, --layout, --wells and --val-wells from the run's record where not given, and
    refuse ones that contradict it: a resumed run trained on other wells would, e.g., take a
    cross-validation fold's held-out wells into training."""
    from pathlib import Path

    if "root" in recorded and recorded["root"] is None:
        _refuse_data_for_synthetic(args, out)
    root = recorded.get("root")
    if args.data is None:
        args.data = root
    elif root and Path(root).is_dir() and not Path(args.data).expanduser().is_dir():
        raise ValueError(f"--data {args.data} is not a folder ({out} was trained on {root})")
    elif root and Path(root).is_dir() and not Path(root).samefile(Path(args.data).expanduser()):
        raise ValueError(
            f"--data {args.data} contradicts {out}, which was trained on {root}; drop --data "
            "to resume with the recorded data"
        )
    layout = recorded.get("layout")
    if layout and args.layout != layout:
        if args.layout != "bbbc010":  # the default: not asked for
            raise ValueError(
                f"--layout {args.layout} contradicts {out}, which was trained with layout "
                f"{layout}; drop --layout to resume with the recorded one"
            )
        args.layout = layout
    for key, flag in (("wells", "--wells"), ("val_wells", "--val-wells")):
        if key not in recorded:  # a record from before val_wells was recorded
            continue
        given, kept = split_wells(getattr(args, key)), recorded[key]
        if given is None:
            setattr(args, key, ",".join(kept) if kept else None)
        elif given != kept:
            shown = ",".join(kept) if kept else "none (all wells)"
            raise ValueError(
                f"{flag} {','.join(given)} contradicts {out}, which was trained with {key} "
                f"{shown}; drop {flag} to resume with the recorded ones"
            )


def _refuse_data_for_synthetic(args: argparse.Namespace, out: str) -> None:
    """A run recorded without data trained on synthetic worms only: resuming it with --data
    would train its last steps on a folder while its card, written for the whole run, claims
    that folder for all of them."""
    given = [
        f"--{name} {value}"
        for name, value in (
            ("data", args.data),
            ("wells", args.wells),
            ("val-wells", args.val_wells),
        )
        if value is not None
    ]
    if args.layout != "bbbc010":  # the default: not asked for
        given.append(f"--layout {args.layout}")
    if given:
        flags = " ".join(flag.split()[0] for flag in given)
        raise ValueError(
            f"{' '.join(given)} contradicts {out}, which was trained on synthetic worms only "
            f"(no --data); drop {flags} to resume it, or start a new run (--base {out} and "
            "another --out) to train on data"
        )


def _checkpoint_to_resume(args: argparse.Namespace):
    """The checkpoint ``--resume`` continues (a fold's own file with --folds)."""
    from pathlib import Path

    from napari_semiconv.core.training import fold_path, resumable_checkpoint

    out = Path(args.out) if args.folds is None else fold_path(args.out, args.fold)
    return out, resumable_checkpoint(out)


def _settings(args: argparse.Namespace) -> tuple:
    """(model config, recipe) of the run: resuming, those the checkpoint records."""
    from pathlib import Path

    from napari_semiconv.core.training import resumed_fraction

    if Path(args.out).expanduser().is_dir():
        example = f"{args.out}/worms.pt"
        raise ValueError(f"--out {args.out} is a folder; give a file name, e.g. {example}")
    if not args.resume:
        _refuse_existing(args)
        return _model_config(args), _recipe(args, None, args.out)
    out, ckpt = _checkpoint_to_resume(args)
    model = _resumed_model(args, ckpt.config, str(out))
    recipe = _recipe(args, (ckpt.card or {}).get("recipe"), str(out))
    _resumed_data(args, (ckpt.card or {}).get("data") or {}, str(out))
    step = int(ckpt.train_state["step"])
    if step >= recipe["iterations"]:
        raise ValueError(
            f"{out} has finished its {recipe['iterations']} iterations (step {step}); nothing "
            "to resume. To train it further, start a new run with --base and another --out"
        )
    try:  # a time budget that ended the run spent its schedule: refused before the data
        resumed_fraction(out.name, ckpt, int(recipe["iterations"]))
    except ValueError:
        raise ValueError(
            f"{out} has finished its learning-rate schedule (its time budget ended it at step "
            f"{step}); resumed, it would only train at its final, smallest rate: nothing to "
            "resume. To train it further, start a new run with --base and another --out"
        ) from None
    return model, recipe


def _refuse_existing(args: argparse.Namespace) -> None:
    """A new run never replaces an earlier one's checkpoints (checked before loading data)."""
    from pathlib import Path

    from napari_semiconv.core.training import best_path, fold_path

    out = Path(args.out) if args.folds is None else fold_path(args.out, args.fold)
    for path in (out, best_path(out)):
        if path.exists():
            raise FileExistsError(
                f"{path} exists; add --resume to continue that run, or choose another --out"
            )


def run(args: argparse.Namespace) -> int:
    from napari_semiconv.core.training import TrainConfig, TrainingDiverged, fold_config, train

    if (args.folds is None) != (args.fold is None):
        raise ValueError("--folds K and --fold I go together")
    if args.folds is not None and not 0 <= args.fold < args.folds:
        raise ValueError(f"--fold must be in 0..{args.folds - 1}, got {args.fold}")
    if args.folds is not None and args.val_wells:
        # checked before any data is read: each fold would drop the val wells altogether
        raise ValueError(
            "--folds makes its own validation wells (each fold holds out its share of the "
            "wells); drop --val-wells, or drop --folds and --fold to validate on --val-wells"
        )
    model, recipe = _settings(args)
    if args.data is None and recipe["synthetic_fraction"] < 1.0:
        raise ValueError("--data is required unless --synthetic 1.0 (synthetic worms only)")
    config = TrainConfig(
        model=model,
        data_root=args.data,
        layout=args.layout,
        wells=split_wells(args.wells),
        val_wells=split_wells(args.val_wells),
        iterations=recipe["iterations"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        schedule=recipe["schedule"],
        warmup_iters=recipe["warmup_iters"],
        crop=recipe["crop"] or None,
        augment=recipe["augment"],
        synthetic_fraction=recipe["synthetic_fraction"],
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        out=args.out,
        resume=args.resume,
        base=recipe["base"],
        train_heads_only=recipe["train_heads_only"],
        amp=recipe["amp"],
        device=args.device,
        seed=recipe["seed"],
        time_budget_s=args.time_budget,
        data_workers=args.data_workers,
    )
    if args.folds is not None:
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
