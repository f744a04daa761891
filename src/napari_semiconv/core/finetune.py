"""Fine-tuning from a few annotated images: the napari-free half of the "Fine-tune" widget.

A biologist corrects a few worms and retrains; this module turns what they picked into a
:class:`~napari_semiconv.core.training.TrainConfig` for the trainer (``core.training.train``):

- ``core.finetune_pairs.check_pair`` (re-exported here) refuses annotations that would teach
  the model nonsense and crops a pair to its rectangles of interest.
- :func:`build_train_config` loads the base model's architecture, writes the pairs as an
  ``images/`` + ``labels/`` folder beside the new model (so :func:`cli_command` names a command
  that really reproduces the run), and fills the model card (base model, pairs and sizes, the
  command). The trainer writes the checkpoint and its card atomically.
- :func:`train_with_budget` stops a run after a time budget, at the first checkpoint after the
  deadline, so the work done is kept; :class:`LossHistory` is the loss curve, saved as JSON.

The embedding loss (eq. 5) and the kernel loss (eq. 10) are part of the trainer's losses; nothing
here changes the method, only what it is trained on.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_semiconv.core.finetune_pairs import (
    GIANT_FRACTION,
    MIN_SIDE,
    AnnotatedPair,
    Roi,
    check_pair,
    check_roi,
    roi_from_points,
)
from napari_semiconv.core.finetune_run import LossHistory, train_with_budget

__all__ = [
    "GIANT_FRACTION",
    "MIN_SIDE",
    "AnnotatedPair",
    "FineTuneSpec",
    "LossHistory",
    "build_train_config",
    "check_folder",
    "check_pair",
    "check_spec",
    "checkpoint_cadence",
    "cli_command",
    "history_path",
    "output_path",
    "check_roi",
    "roi_from_points",
    "safe_name",
    "train_with_budget",
]


@dataclass
class FineTuneSpec:
    """What the Fine-tune widget gathered: data, base model, recipe and output.

    Training data is either ``pairs`` (from the viewer) or ``folder`` (``images/`` + ``labels/``
    by file stem, the ``folders`` layout), never both. ``minutes`` > 0 stops the run after that
    long (at the next checkpoint); ``iterations`` is the length of the cosine schedule either way.
    ``name``: the new model's name in ``out_dir`` (default: the user's model folder).
    """

    base: str
    pairs: list[AnnotatedPair] = field(default_factory=list)
    folder: str | None = None
    val_pair: AnnotatedPair | None = None
    name: str = ""
    iterations: int = 200
    minutes: float = 0.0
    lr: float = 0.0025
    heads_only: bool = True
    device: str = "auto"
    batch_size: int = 2
    crop: int | None = 256
    resume: bool = False
    preview_every: int = 0
    seed: int = 0
    out_dir: str | None = None


# ---------------------------------------------------------------------------- checking input
def check_folder(folder: str | Path) -> list[str]:
    """The image stems of ``folder/images`` with a label file in ``folder/labels`` (same stem,
    or the stem + ``_instances``/``_labels``/``_masks``…, as ``core.data.folders`` reads them).

    Raises:
        ValueError: the folder, a sub-folder or any matching pair is missing.
    """
    root = Path(folder).expanduser()
    for sub in ("images", "labels"):
        if not (root / sub).is_dir():
            raise ValueError(
                f"training folder {root} has no {sub}/ sub-folder; it needs images/ and "
                "labels/ with one label image per image, by file name (stem)"
            )
    from napari_semiconv.core.data.folders import _LABEL_TAGS  # the reader's own name rule

    labels = {p.stem for p in (root / "labels").iterdir() if p.is_file()}
    stems = {p.stem for p in (root / "images").iterdir() if p.is_file()}
    both = sorted(s for s in stems if any(s + tag in labels for tag in _LABEL_TAGS))
    if not both:
        raise ValueError(
            f"no image in {root / 'images'} has a label image of the same name in {root / 'labels'}"
        )
    return both


def _check_sample(sample: Any) -> None:
    """The checks of :func:`check_pair` on a sample read from a folder (masks N×H×W)."""
    masks = np.asarray(sample.masks, dtype=bool)
    if masks.shape[0] == 0 or not masks.any():
        raise ValueError(f"{sample.name}: its label image has no labelled worm")
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1) / masks[0].size
    if areas.max() > GIANT_FRACTION:
        raise ValueError(
            f"{sample.name}: one label covers {100 * areas.max():.0f}% of the image, almost "
            "certainly a foreground mask, not a worm; give every worm its own label"
        )


def check_spec(spec: FineTuneSpec) -> None:
    """Raise ValueError/TypeError naming the first problem of ``spec``; start nothing."""
    if spec.pairs and spec.folder:
        raise ValueError("train either on pairs from the viewer or on a folder, not both")
    if not spec.pairs and not spec.folder:
        raise ValueError(
            "no training pairs: add at least one (image, labels) pair, or choose a folder"
        )
    if not spec.base and not spec.resume:
        raise ValueError("no base model: choose the model to start from")
    if int(spec.iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {spec.iterations}")
    if not (math.isfinite(spec.lr) and spec.lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {spec.lr}")
    if spec.minutes < 0 or not math.isfinite(spec.minutes):
        raise ValueError(f"the time budget must be >= 0 minutes, got {spec.minutes}")
    if spec.crop is not None and int(spec.crop) < MIN_SIDE:
        raise ValueError(f"the crop must be at least {MIN_SIDE} px, got {spec.crop}")
    for pair in spec.pairs:
        check_pair(pair)
    if spec.folder:
        check_folder(spec.folder)
    if spec.val_pair is not None:
        check_pair(spec.val_pair)
    if spec.resume and not output_path(spec).is_file():
        raise ValueError(
            f"nothing to resume: {output_path(spec)} does not exist; untick Resume to start a "
            "new model"
        )


# ---------------------------------------------------------------------------- output naming
def safe_name(name: str) -> str:
    """``name`` with anything but letters, digits, ``-``, ``_`` and ``.`` made ``-``, and a
    typed ``.pt`` / ``.pth`` dropped (``v1.pt`` would be saved as ``v1.pt.pt``, and a name
    ending in .pt is read as a path, not a user model)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    cleaned = re.sub(r"(\.pth?)+$", "", cleaned, flags=re.IGNORECASE).strip("-.")
    return cleaned or "finetuned"


def _out_dir(spec: FineTuneSpec) -> Path:
    from napari_semiconv.core.model_store import user_model_dir

    return Path(spec.out_dir).expanduser() if spec.out_dir else user_model_dir()


def output_path(spec: FineTuneSpec) -> Path:
    """Where the new model goes: ``<out_dir>/<name>.pt``; without ``resume`` a name already
    taken gets ``-2``, ``-3``… (nothing is ever overwritten). A bundled model's name counts as
    taken: that name loads the bundled model, never a user model of the same name."""
    from napari_semiconv.core.model_store import registry

    stem = safe_name(spec.name or f"{Path(str(spec.base)).stem}-finetuned")
    folder = _out_dir(spec)
    path = folder / f"{stem}.pt"
    if spec.resume:
        return path
    bundled = set(registry())
    # "v-2" taken, made from a taken "v", goes on to "v-3", not "v-2-2" (the widget shows the
    # name it took, so the next run starts from it); other numbers (a date: worms-2024-05-01,
    # run-007) are part of the name
    numbered = re.fullmatch(r"(.+)-([1-9]\d{0,2})", stem)
    if numbered and (folder / f"{numbered.group(1)}.pt").exists():
        base, k = numbered.group(1), int(numbered.group(2)) + 1
    else:
        base, k = stem, 2
    while path.exists() or _data_dir(path).exists() or path.stem in bundled:
        path = folder / f"{base}-{k}.pt"
        k += 1
    return path


def history_path(out: str | Path) -> Path:
    """The loss history beside a checkpoint: ``model.pt`` -> ``model.history.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.history.json")


def _data_dir(out: Path) -> Path:
    return out.with_name(f"{out.stem}.data")


def checkpoint_cadence(iterations: int, preview_every: int = 0) -> int:
    """Steps between checkpoints: ~10 per run, at most 25 apart (what Cancel or a time budget
    can lose), and at every preview (the preview reads the latest checkpoint)."""
    every = max(1, min(25, int(iterations) // 10))
    return max(1, min(every, int(preview_every))) if preview_every > 0 else every


# ---------------------------------------------------------------------------- the run
def cli_command(config: Any, spec: FineTuneSpec) -> str:
    """The ``napari-semiconv train`` command that repeats this run (minus the time budget and
    the validation pair, which the CLI does not take). Its ``--out`` is a new file beside the
    model (``<name>-repeat.pt``): the model's own name is taken by the model, and a run refuses
    to start over an existing checkpoint, so the command as written failed."""
    out = Path(str(config.out))
    args = ["napari-semiconv", "train", "--base", str(spec.base)]
    args += ["--layout", "folders", "--data", str(config.data_root or "<images+labels folder>")]
    args += ["--out", str(out.with_name(f"{out.stem}-repeat{out.suffix}"))]
    args += ["--iterations", str(config.iterations)]
    args += ["--batch-size", str(config.batch_size), "--lr", f"{config.lr:g}"]
    args += ["--schedule", config.schedule, "--warmup", str(config.warmup_iters)]
    args += ["--crop", str(config.crop or 0), "--checkpoint-every", str(config.checkpoint_every)]
    args += ["--device", str(config.device), "--seed", str(config.seed)]
    if config.train_heads_only:
        args.append("--heads-only")
    if not config.model.semiconv:
        args.append("--no-semiconv")
    return " ".join(shlex.quote(a) for a in args)


def _crop_samples(
    pair: AnnotatedPair, crops: list[tuple[np.ndarray, np.ndarray, Roi | None]], mode: str
) -> list[tuple[Any, np.ndarray, str | None]]:
    """``[(sample, image to save, the mode it is normalised for or None)]`` of a checked pair.

    A rectangle is cut from the image normalised as a whole, as ``segment`` sees it: a crop
    normalised on its own would map bright-field intensities by its own percentiles (a worm-
    filled rectangle's worms came out 0.15 brighter than at inference). Such a crop is saved
    normalised, marked so, since normalising it again would undo the point.
    """
    from napari_semiconv.core.data.arrays import labels_to_masks, sample_from_arrays
    from napari_semiconv.core.data.sample import Sample
    from napari_semiconv.core.preprocess import normalise

    whole, out = None, []
    for image, labels, roi in crops:
        if roi is None:
            out.append((sample_from_arrays(image, labels, mode, pair.name), image, None))
            continue
        if whole is None:
            whole = normalise(np.asarray(pair.image), mode)
        grey = np.ascontiguousarray(whole[roi[0] : roi[2], roi[1] : roi[3]])
        out.append((Sample(grey, labels_to_masks(labels, grey.shape), pair.name), grey, mode))
    return out


def _save_pairs(
    crops: list[tuple[str, np.ndarray, np.ndarray, str | None]], root: Path, resume: bool
) -> None:
    """Write the training crops as ``root/images/<stem>.tif`` + ``root/labels/<stem>.tif``;
    a crop already normalised carries ``core.data.folders.normalised_tag`` in its TIFF."""
    import io

    import tifffile

    from napari_semiconv.core.atomic import atomic_write_bytes
    from napari_semiconv.core.data.folders import normalised_tag
    from napari_semiconv.core.export import write_label_image

    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, image, labels, normalised in crops:
        buffer = io.BytesIO()
        if normalised is None:
            tifffile.imwrite(buffer, np.ascontiguousarray(image))
        else:
            tifffile.imwrite(buffer, image, description=normalised_tag(normalised), metadata=None)
        atomic_write_bytes(root / "images" / f"{stem}.tif", buffer.getvalue(), overwrite=resume)
        write_label_image(root / "labels" / f"{stem}.tif", labels, overwrite=resume)


def _pair_record(pair: AnnotatedPair, crops: list) -> dict[str, Any]:
    return {
        "image": pair.image_name,
        "labels": pair.labels_name,
        "shape": [int(s) for s in np.asarray(pair.labels).shape],
        "rectangles": [list(c[2]) for c in crops if c[2] is not None] or None,
        "n_worms": int(sum(np.unique(c[1][c[1] > 0]).size for c in crops)),
    }


def build_train_config(spec: FineTuneSpec) -> Any:
    """A ready :class:`~napari_semiconv.core.training.TrainConfig` for ``spec``.

    Reads the base model's architecture (the fine-tuned model keeps it), normalises the pairs
    for its input mode (``core.data.arrays.sample_from_arrays``), writes them to
    ``<name>.data/`` beside the model (skipped for a folder, which is used in place) and fills
    the card. Everything is checked before anything is written.

    Raises:
        ValueError / TypeError: as :func:`check_spec`, or a base model that cannot be read.
    """
    from napari_semiconv.core.model_store import read_checkpoint
    from napari_semiconv.core.training import TrainConfig

    check_spec(spec)
    out = output_path(spec)
    source = str(out) if spec.resume else spec.base
    model = read_checkpoint(source).config
    mode = model.input_mode
    samples, saved, records = [], [], []
    for i, pair in enumerate(spec.pairs):
        crops = check_pair(pair)
        records.append(_pair_record(pair, crops))
        for j, (sample, image, normalised) in enumerate(_crop_samples(pair, crops, mode)):
            sample.name = f"pair{i + 1:02d}-{j + 1}_{safe_name(pair.image_name)}"
            samples.append(sample)
            saved.append((sample.name, image, crops[j][1], normalised))
    if spec.folder:
        from napari_semiconv.core.training_data import read_samples

        samples = read_samples(str(Path(spec.folder).expanduser()), "folders", mode)
        for sample in samples:
            _check_sample(sample)
        records = [{"name": s.name, "shape": list(s.image.shape), "n_worms": len(s.masks)}
                   for s in samples]  # fmt: skip
    val, val_record = [], None
    if spec.val_pair is not None:
        crops = check_pair(spec.val_pair)
        val_record = _pair_record(spec.val_pair, crops)
        val = [sample for sample, _, _ in _crop_samples(spec.val_pair, crops, mode)]
        for k, sample in enumerate(val):
            sample.name = f"val-{k}"
    data_root = str(_data_dir(out)) if spec.pairs else str(Path(spec.folder).expanduser())
    iterations = int(spec.iterations)
    every = checkpoint_cadence(iterations, spec.preview_every)
    config = TrainConfig(
        model=model,
        samples=samples,
        val_samples=val,
        data_root=data_root,
        layout="folders",
        iterations=iterations,
        batch_size=int(spec.batch_size),
        lr=float(spec.lr),
        warmup_iters=min(50, iterations // 10),
        schedule="cosine",
        seed=int(spec.seed),
        device=spec.device,
        crop=int(spec.crop) if spec.crop else None,
        # the time budget needs validation at every checkpoint: the run may stop at any of them
        eval_every=every if (val and spec.minutes > 0) else 0,
        checkpoint_every=every,
        out=str(out),
        resume=bool(spec.resume),
        base=None if spec.resume else spec.base,
        train_heads_only=bool(spec.heads_only),
    )
    config.check()
    config.card = {
        "name": out.stem,
        "description": f"fine-tuned from {spec.base} in napari",
        "base_model": spec.base,
        "training_pairs": records,
        "training_folder": None if spec.pairs else data_root,
        "validation_pair": val_record,
        "annotation": (
            "whole images count as annotated (unlabelled pixels = background), except pairs "
            "with rectangles, where only the rectangles are used"
        ),
        "time_budget_min": float(spec.minutes) or None,
        "command": cli_command(config, spec),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if spec.pairs:
        _save_pairs(saved, _data_dir(out), resume=spec.resume)
    return config
