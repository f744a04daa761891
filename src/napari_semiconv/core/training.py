"""The trainer: `train(config)` is a generator of progress events; stop iterating to cancel.

Recipe (METHOD.md sec. 4, the paper sec. 4.3): SGD with momentum 0.9 and weight decay 1e-4,
linear warm-up, then step (÷10 at fixed fractions of the run) or cosine decay; gradient-norm
clipping at 10; bf16 autocast on CUDA. The two-stage schedule of sec. 4.3 is
``base=<plain Mask R-CNN checkpoint>`` with ``model.semiconv=True``: the baseline's weights are
loaded and the embedding head and σ (eq. 10) start fresh.

Determinism and resuming: the batch of step s (which samples, their augmentation, the synthetic
worms mixed in, torch's RoI sampling) is drawn from generators seeded by (seed, s, rank) only, so
a run resumed from a checkpoint at step s continues exactly as the uninterrupted run would; the
checkpoint's ``train_state`` holds the optimizer state, the step, the best validation AP and how
far the schedule had got (``fraction``). A time budget given to a resumed run is a budget for the
continuation: the learning rate goes on from where the schedule stopped, never back up; more
iterations stretch the schedule to the new length, and a finished schedule is not resumed.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the same call joins the process group (gloo on
CPU, nccl on CUDA), wraps the model in DistributedDataParallel, gives each rank a disjoint share
of every epoch (DistributedSampler) and lets rank 0 alone write checkpoints and validate.

Checkpoints are written atomically (``core.checkpoint.save_checkpoint``), so cancelling, a crash,
or a NaN loss (which stops the run with :class:`TrainingDiverged`) leaves the last good file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from napari_semiconv.core.atomic import check_folder_writable
from napari_semiconv.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.devices import bf16_autocast_pays
from napari_semiconv.core.distributed import ProcessGroup
from napari_semiconv.core.folds import fold_config, fold_path, kfold
from napari_semiconv.core.model.builder import (
    build_model,
    load_baseline_weights,
    load_without_embedding,
)
from napari_semiconv.core.training_config import (
    TrainConfig,
    TrainingDiverged,
    TrainProgress,
    best_path,
    lr_factor,
)
from napari_semiconv.core.training_data import iter_batches, load_samples, step_seed
from napari_semiconv.core.worm_size import worm_area_record

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainingDiverged",
    "best_path",
    "fold_config",
    "fold_path",
    "kfold",
    "lr_factor",
    "resumable_checkpoint",
    "resumed_fraction",
    "train",
]


def resumable_checkpoint(out: str | os.PathLike[str]) -> Checkpoint:
    """The checkpoint at ``out``, checked to hold a training state to resume from.

    Raises:
        FileNotFoundError: no file at ``out``.
        ValueError: a final export (no training state).
    """
    out = Path(out)
    if not out.is_file():
        raise FileNotFoundError(f"cannot resume: {out} does not exist")
    ckpt = load_checkpoint(out)
    if ckpt.train_state is None:
        raise ValueError(f"{out} holds no train_state (a final export?); it cannot be resumed")
    return ckpt


def _resume_checkpoint(config: TrainConfig) -> Checkpoint:
    """The checkpoint ``config`` resumes. It decides the model, so ``config.model`` becomes its
    config here, before any data is loaded: the data are normalised for its input mode."""
    out = Path(config.out)
    ckpt = resumable_checkpoint(out)
    mode, asked = ckpt.config.input_mode, config.model.input_mode
    if (config.samples or config.val_samples) and asked != mode:
        # given samples were normalised for the config's mode, not for the model's
        raise ValueError(
            f"{out} is a {mode!r}-input model but the samples were prepared for {asked!r}"
        )
    step = int(ckpt.train_state.get("step", 0))
    if config.iterations <= step:
        # nothing would be trained, yet the run would end "saved at step <iterations>"
        raise ValueError(
            f"{out.name} is already at step {step}; to train it further, give it more than "
            f"{step} iterations (it has {config.iterations})"
        )
    ckpt.train_state["fraction"] = resumed_fraction(out.name, ckpt, config.iterations)
    config.model = ckpt.config
    return ckpt


def resumed_fraction(name: str, ckpt: Checkpoint, iterations: int) -> float:
    """How far through its learning-rate schedule a resumed run starts.

    The saved run got ``fraction`` of the way through a schedule of its own ``iterations``
    (the card's recipe). Given more iterations, the run is the same run made longer: its
    schedule stretches to the new length (at 10 of 10 steps done, resumed for 20, it is half
    way, before the first decay). Resuming a run at its full length used to go on at its final,
    smallest rate (1e-7 for 200 more steps of a fine-tune): a finished schedule is refused.
    """
    state = ckpt.train_state
    fraction = float(state.get("fraction", 0.0))
    recorded = (ckpt.card.get("recipe") or {}).get("iterations")
    if isinstance(recorded, int) and 0 < recorded < iterations:
        fraction *= recorded / iterations
    if fraction >= 1.0 - 1e-9:
        step = int(state.get("step", 0))
        longer = f"more than {recorded} iterations, " if isinstance(recorded, int) else ""
        raise ValueError(
            f"{name} has finished its learning-rate schedule (at step {step}, when its "
            "iterations or its time budget ran out): resumed, it would only train at its "
            f"final, smallest rate. To train it longer, give it {longer}or start a new model "
            "with it as the base model"
        )
    return fraction


def _prepare_model(
    config: TrainConfig, resumed: Checkpoint | None
) -> tuple[torch.nn.Module, dict | None, list[str]]:
    """(model, train_state to resume or None, notes) for ``config``."""
    notes: list[str] = []
    out = Path(config.out) if config.out else None
    if out is not None and resumed is None:
        for path in (out, best_path(out)):
            if path.exists():
                raise FileExistsError(
                    f"{path} exists; resume that run, or choose another output name or remove it"
                )
    if resumed is not None:
        model = build_model(resumed.config)
        model.load_state_dict(resumed.state_dict)
        notes.append(f"resumed {out} at step {resumed.train_state['step']}")
        return model, resumed.train_state, notes
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    if config.base:
        from napari_semiconv.core.model_store import read_checkpoint

        base = read_checkpoint(config.base)
        for key in ("backbone", "input_mode", "norm"):
            if getattr(base.config, key) != getattr(config.model, key):
                raise ValueError(
                    f"the base model's {key} is {getattr(base.config, key)!r} but the config asks "
                    f"for {getattr(config.model, key)!r}; use the base model's"
                )
        if config.model.semiconv and not base.config.semiconv:
            fresh = load_baseline_weights(model, base.state_dict)
            notes.append(f"two-stage: baseline {config.base} + fresh {len(fresh)} tensors")
        elif base.config.semiconv and not config.model.semiconv:
            dropped = load_without_embedding(model, base.state_dict)
            notes.append(f"plain from {config.base}: its {len(dropped)} semi-conv tensors left out")
        else:
            model.load_state_dict(base.state_dict)
            notes.append(f"fine-tuning {config.base}")
    return model, None, notes


def _train_mode(model: torch.nn.Module, heads_only: bool) -> None:
    model.train()
    if heads_only:  # frozen backbone + FPN keep their BatchNorm statistics too
        model.backbone.eval()


# what core.preprocess.normalise does per input mode, for the model card
_NORMALISATION = {
    "binary": "core.preprocess.normalise(binary): foreground 1.0 (label != 0, or grey > half "
    "its maximum), background 0.0",
    "brightfield": "core.preprocess.normalise(brightfield): per-image percentiles -> [0, 1]",
}


def _card(
    config: TrainConfig, step: int, metrics: dict | None, world: int, worm_area: dict | None
) -> dict[str, Any]:
    recipe = {
        k: getattr(config, k)
        for k in (
            "iterations", "batch_size", "lr", "momentum", "weight_decay", "warmup_iters",
            "schedule", "grad_clip", "seed", "amp", "crop", "augment", "synthetic_fraction",
            "train_heads_only",
        )
    }  # fmt: skip
    recipe.update(lr_steps=list(config.lr_steps), base=config.base, world_size=world)
    card = {
        "name": Path(config.out).stem if config.out else "model",
        "input_mode": config.model.input_mode,
        "preprocessing": {"grey": "luminance", "normalise": config.model.input_mode},
        "normalisation": _NORMALISATION[config.model.input_mode],
        "scale": "native: images are not resized (core.inference.native_scale)",
        "data": {
            "root": config.data_root,
            "layout": config.layout,
            "wells": list(config.wells) if config.wells else None,
            "val_wells": list(config.val_wells) if config.val_wells else None,
            "n_train": len(config.samples),
            "n_val": len(config.val_samples),
            "train_names": [s.name for s in config.samples[:500]],
            "val_names": [s.name for s in config.val_samples[:500]],
        },
        # what the model learnt a worm's size to be: segment warns far from it (core.worm_size)
        "worm_area": worm_area,
        "recipe": recipe,
        "step": int(step),
        "metrics": metrics,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    card.update(config.card)
    return card


def _validate(model: torch.nn.Module, samples: list[Sample]) -> dict[str, Any]:
    from napari_semiconv.core.evaluation import evaluate
    from napari_semiconv.core.inference import segment

    preds = [segment(model, s.image, preprocessed=True) for s in samples]
    result = evaluate(preds, [s.masks for s in samples], names=[s.name for s in samples])
    return dict(result.summary)


def train(config: TrainConfig) -> Iterator[TrainProgress]:
    """Train a model; yield a :class:`TrainProgress` after every step, validation and checkpoint.

    Stop iterating (``close()`` the generator, or break) to cancel: the checkpoints already
    written stay valid. Under ``torchrun`` every rank calls this with the same config.

    Raises:
        ValueError / TypeError: a bad setting, or no data.
        FileExistsError: ``out`` exists and ``resume`` is False.
        TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
    """
    config.check()
    config = dataclasses.replace(config)  # loading data below must not mutate the caller's
    resumed = _resume_checkpoint(config) if config.resume else None
    if not config.samples and config.data_root:
        config.samples, config.val_samples = load_samples(config)
    if not config.samples and config.synthetic_fraction < 1.0:
        raise ValueError(
            "no training data: give samples, data_root, or synthetic_fraction=1.0 for synthetic "
            "worms only"
        )
    if config.val_samples and not any(len(s.masks) for s in config.val_samples):
        # found now, not after the training: AP needs at least one worm to find
        names = ", ".join(s.name for s in config.val_samples[:5])
        raise ValueError(
            f"the validation images ({names}) hold no worm, so no AP can be computed; "
            "validate on images with worms, or on none"
        )
    group = ProcessGroup(config.device)
    try:
        yield from _run(config, group, resumed)
    finally:
        group.close()


def _run(
    config: TrainConfig, group: ProcessGroup, resumed: Checkpoint | None
) -> Iterator[TrainProgress]:
    model, state, notes = _prepare_model(config, resumed)
    config.model = model.config
    heads_only = config.train_heads_only
    if heads_only:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    model.to(group.device)
    _train_mode(model, heads_only)
    net: torch.nn.Module = model
    if group.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[group.device.index] if group.device.type == "cuda" else None,
            find_unused_parameters=True,  # an image without worms leaves the mask head unused
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    start, best, floor = 0, -math.inf, 0.0
    if state is not None:
        optim.load_state_dict(state["optimizer"])
        start = int(state["step"])
        best = -math.inf if state.get("best_ap") is None else float(state["best_ap"])
        # where the schedule had got to: a time budget may have decayed it ahead of the steps,
        # and a resumed run goes on from there, never back up to a higher rate
        floor = float(state.get("fraction", 0.0))
    total = config.iterations
    out = Path(config.out) if config.out else None
    if out is not None and group.main:
        out.parent.mkdir(parents=True, exist_ok=True)
        check_folder_writable(out.parent)  # now, not at the first checkpoint after the work
    use_amp = config.amp and bf16_autocast_pays(group.device)
    worm_area = worm_area_record(s.masks for s in config.samples)  # once, for every card
    yield TrainProgress(start, total, "train", message="; ".join(notes) or "starting")
    started, last_metrics = time.perf_counter(), None
    budget = config.time_budget_s
    batches = iter_batches(config, start, total, group.rank, group.world, config.data_workers)
    try:
        for step in range(start, total):
            images, targets = next(batches)
            # the RPN and RoI heads sample anchors and proposals with torch's generator
            torch.manual_seed(step_seed(config.seed, step, group.rank, 1))
            images = [im.to(group.device, non_blocking=True) for im in images]
            targets = [{k: v.to(group.device) for k, v in t.items()} for t in targets]
            fraction = max(step / max(1, config.iterations), floor)
            if budget:
                fraction = max(fraction, (time.perf_counter() - started) / budget)
            for param_group in optim.param_groups:
                param_group["lr"] = config.lr * lr_factor(config, step, fraction)
            values, reported = _optimise(
                net, optim, params, images, targets, config, use_amp, step, out, group
            )
            done = step + 1
            elapsed = time.perf_counter() - started
            if budget and group.agree(elapsed >= budget):
                total = done  # the budget is spent: validate, checkpoint and stop at this step
            yield TrainProgress(
                done,
                total,
                "train",
                losses={"loss": float(values.sum()), **reported},
                lr=optim.param_groups[0]["lr"],
                images_per_s=(done - start) * config.batch_size * group.world / max(elapsed, 1e-9),
                eta_s=_eta(total - done, elapsed / (done - start), budget, elapsed),
            )
            if config.val_samples and (
                done == total or (config.eval_every and done % config.eval_every == 0)
            ):
                if group.main:
                    last_metrics = _validate(model, config.val_samples)
                    _train_mode(model, heads_only)
                    yield TrainProgress(done, total, "val", metrics=last_metrics)
                    ap = last_metrics.get("AP")
                    if out is not None and ap is not None and ap > best:
                        best = float(ap)
                        card = _card(config, done, last_metrics, group.world, worm_area)
                        path = save_checkpoint(best_path(out), model, card)
                        yield TrainProgress(done, total, "checkpoint", checkpoint=str(path))
                group.barrier()
            if out is not None and (done == total or done % config.checkpoint_every == 0):
                if group.main:
                    _check_finite(model, done, out)
                    train_state = {
                        "step": done,
                        "optimizer": optim.state_dict(),
                        "best_ap": best if math.isfinite(best) else None,
                        "seed": config.seed,
                        "fraction": min(1.0, fraction),
                    }
                    card = _card(config, done, last_metrics, group.world, worm_area)
                    path = save_checkpoint(out, model, card, train_state)
                    yield TrainProgress(done, total, "checkpoint", checkpoint=str(path))
                group.barrier()
            if done >= total:
                break
    finally:
        batches.close()  # stops data workers, also when the caller cancels
    model.eval()
    yield TrainProgress(total, total, "done", metrics=last_metrics, model=model)


def _optimise(
    net: torch.nn.Module,
    optim: torch.optim.Optimizer,
    params: list[torch.Tensor],
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    config: TrainConfig,
    use_amp: bool,
    step: int,
    out: Path | None,
    group: ProcessGroup,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One SGD step; (the losses averaged over ranks, the same by name). Stops on NaN/inf."""
    from napari_semiconv.core.inference import native_scale

    with (
        native_scale(net),
        torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=use_amp),
    ):
        losses = net(images, targets)
    names = sorted(losses)
    # the mean over ranks: every rank sees the same values, so all stop together on NaN
    values = group.mean(torch.stack([losses[k].detach().float() for k in names]))
    reported = dict(zip(names, values.tolist(), strict=True))
    if not bool(torch.isfinite(values).all()):
        raise TrainingDiverged(
            f"loss became NaN/inf at step {step + 1} ({reported}); lower the learning rate "
            f"(now {config.lr}); {_kept(out)}"
        )
    optim.zero_grad(set_to_none=True)
    sum(losses[k] for k in names).backward()
    norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    if not bool(torch.isfinite(norm)):
        raise TrainingDiverged(
            f"gradient norm became NaN/inf at step {step + 1}; lower the learning rate; "
            f"{_kept(out)}"
        )
    optim.step()
    return values, reported


def _eta(steps_left: int, s_per_step: float, budget: float | None, elapsed: float) -> float:
    """Seconds to go: the steps left at the pace so far, or what is left of the time budget."""
    eta = steps_left * s_per_step
    return min(eta, max(0.0, budget - elapsed)) if budget else eta


def _kept(out: Path | None) -> str:
    if out is not None and out.exists():
        return f"the last good checkpoint {out} is kept"
    return "no checkpoint had been written yet"


def _check_finite(model: torch.nn.Module, step: int, out: Path | None) -> None:
    """Never overwrite a good checkpoint with non-finite weights."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(
                f"weights became NaN/inf at step {step} ({name}); lower the learning rate; "
                f"{_kept(out)}"
            )
