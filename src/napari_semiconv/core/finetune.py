"""Fine-tuning from a few annotated images: the napari-free half of the "Fine-tune" widget.

A biologist corrects a few worms and retrains; this module turns what they picked into a
:class:`~napari_semiconv.core.training.TrainConfig` for the trainer (``core.training.train``):

- :func:`check_pair` refuses annotations that would teach the model nonsense (no worms, shapes
  that differ, one label covering most of the image: a foreground mask, not one label per worm)
  and crops a pair to its rectangles of interest (:func:`roi_from_points`). Without a rectangle
  the whole image counts as annotated: every unlabelled pixel is taught as background.
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
    "roi_from_points",
    "safe_name",
    "train_with_budget",
]

#: a label covering more than this fraction of its image is refused (a foreground mask)
GIANT_FRACTION = 0.5
#: smallest image (or rectangle) side accepted for training, in pixels (the trainer's crop floor)
MIN_SIDE = 32
# A label in this many separate pieces (of at least PIECE_MIN_AREA px) is several worms: among
# the 710 worms of the 50 BBBC010 training wells, flattened to one label image (crossing worms
# cut each other), none has more than 3; one label painted over a well's worms has 7-12.
SCATTERED_PIECES = 5
PIECE_MIN_AREA = 20

Roi = tuple[int, int, int, int]  # (row0, col0, row1, col1), ends exclusive


@dataclass
class AnnotatedPair:
    """One training image with its worm labels, as picked in the viewer.

    ``image``: (H, W) grey or (H, W, 3|4) RGB(A), any numeric dtype, raw (normalised later for
    the base model's input mode). ``labels``: (H, W) integers, 0 = background, one id per worm.
    ``rois``: rectangles (row0, col0, row1, col1) to train on; empty = the whole image.
    """

    image: np.ndarray
    labels: np.ndarray
    image_name: str
    labels_name: str
    rois: list[Roi] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.image_name} / {self.labels_name}"


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
def roi_from_points(points: Any, shape: tuple[int, int]) -> Roi:
    """The bounding box of a rectangle's corners (K, 2) in image pixels (row, col), rounded
    outwards and clipped to an image of ``shape``.

    Raises:
        ValueError: the rectangle lies outside the image or is under ``MIN_SIDE`` px on a side.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] < 2 or len(pts) < 2 or not np.isfinite(pts).all():
        raise ValueError(f"a rectangle needs corner points (K, 2), got an array of {pts.shape}")
    pts = pts[:, -2:]  # (…, row, col): leading axes of an N-D shape layer are dropped
    height, width = int(shape[0]), int(shape[1])
    r0, c0 = np.floor(pts.min(axis=0)).astype(int)
    r1, c1 = np.ceil(pts.max(axis=0)).astype(int)
    roi = int(max(r0, 0)), int(max(c0, 0)), int(min(r1, height)), int(min(c1, width))
    check_roi(roi, (height, width))
    return roi


def check_roi(roi: Roi, shape: tuple[int, int]) -> None:
    """Refuse a rectangle that is not inside an image of ``shape`` or under ``MIN_SIDE`` px."""
    r0, c0, r1, c1 = (int(v) for v in roi)
    if not (0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]):
        raise ValueError(
            f"the rectangle lies outside the {shape[0]}x{shape[1]} image; draw it over the image"
        )
    if min(r1 - r0, c1 - c0) < MIN_SIDE:
        raise ValueError(
            f"the rectangle is {r1 - r0}x{c1 - c0} px inside the image; draw one at least "
            f"{MIN_SIDE} px on a side around the worms you checked"
        )


def _plane_shape(image: np.ndarray, what: str) -> tuple[int, int]:
    if image.ndim == 2:
        return image.shape
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image.shape[:2]
    raise ValueError(
        f"{what} has shape {image.shape}; fine-tuning takes 2-D images (H, W) or RGB (H, W, 3): "
        "for a stack, pick one plane (e.g. Image > Duplicate the current slice)"
    )


def check_pair(pair: AnnotatedPair) -> list[tuple[np.ndarray, np.ndarray, Roi | None]]:
    """Validate ``pair``; return its training crops ``[(image, labels, roi or None)]``.

    Raises:
        TypeError: labels that are not integers.
        ValueError: naming the pair and the problem: a non-2-D image, image and labels of
            different shapes, an image under ``MIN_SIDE`` px, no labelled worm (in a
            rectangle), negative labels, a yes/no (bool) mask, a rectangle outside the image or
            under ``MIN_SIDE`` px, or one label covering more than ``GIANT_FRACTION`` of the
            image (almost certainly a foreground mask, not one label per worm).
    """
    image, labels = np.asarray(pair.image), np.asarray(pair.labels)
    where = f"pair {pair.name!r}"
    shape = _plane_shape(image, f"{where}: image {pair.image_name!r}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(
            f"{where}: labels {pair.labels_name!r} hold {labels.dtype} values; pick a Labels "
            "layer (integer ids, 0 = background)"
        )
    if labels.dtype == bool:
        # a yes/no mask would train every worm in it as one: refused, whatever its size
        raise ValueError(
            f"{where}: labels {pair.labels_name!r} are a yes/no mask, not one label per worm; "
            "give every worm its own label (e.g. start from the Segment widget's result with "
            "'Correct this result')"
        )
    if labels.shape != shape:
        raise ValueError(
            f"{where}: image {pair.image_name!r} is {shape[0]}x{shape[1]} but labels "
            f"{pair.labels_name!r} are {'x'.join(map(str, labels.shape))}; pick the labels drawn "
            "on this image"
        )
    if min(shape) < MIN_SIDE:
        raise ValueError(f"{where}: the image is {shape}, under {MIN_SIDE} px on a side")
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"{where}: labels {pair.labels_name!r} hold negative ids")
    _check_one_label_per_worm(labels, where, pair.labels_name)
    for roi in pair.rois:
        try:
            check_roi(roi, shape)
        except ValueError as exc:
            raise ValueError(f"{where}, rectangle {list(roi)}: {exc}") from None
    crops = []
    for roi in pair.rois or [None]:
        win = (slice(roi[0], roi[2]), slice(roi[1], roi[3])) if roi else (slice(None),) * 2
        crop_labels = labels[win].astype(np.int64)
        inside = f" inside the rectangle {list(roi)}" if roi else ""
        ids, counts = np.unique(crop_labels[crop_labels > 0], return_counts=True)
        if ids.size == 0:
            raise ValueError(
                f"{where}: labels {pair.labels_name!r} have no labelled worm{inside}; paint the "
                "worms (one label per worm) or remove the pair"
            )
        biggest = int(np.argmax(counts))
        fraction = counts[biggest] / crop_labels.size
        if fraction > GIANT_FRACTION:
            raise ValueError(
                f"{where}: label {int(ids[biggest])} of {pair.labels_name!r} covers "
                f"{100 * fraction:.0f}% of the image{inside}. A single object that large is "
                "almost certainly a foreground mask, not a worm: give every worm its own label "
                "(e.g. start from the Segment widget's result with 'Correct this result')"
            )
        crops.append((image[win], crop_labels, roi))
    return crops


def _check_one_label_per_worm(labels: np.ndarray, where: str, name: str) -> None:
    """Refuse a label in ``SCATTERED_PIECES`` or more separate pieces of ``PIECE_MIN_AREA`` px:
    several worms painted with one label (a foreground mask of a sparse plate, which the
    ``GIANT_FRACTION`` rule misses: all 15 worms of a BBBC010 well cover 4 %)."""
    from scipy import ndimage

    ids, compact = np.unique(labels, return_inverse=True)  # any ids -> 0..K (0 = background)
    compact = compact.reshape(labels.shape)
    if ids.size and ids[0] != 0:  # no background pixel: shift so that every id is counted
        ids, compact = np.concatenate([[0], ids]), compact + 1
    for k, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None:
            continue
        pieces, n = ndimage.label(compact[box] == k)
        big = int((np.bincount(pieces.ravel())[1:] >= PIECE_MIN_AREA).sum()) if n else 0
        if big >= SCATTERED_PIECES:
            raise ValueError(
                f"{where}: label {int(ids[k])} of {name!r} is in {big} separate pieces: several "
                "worms painted with one label (a foreground mask?), not one label per worm. Give "
                "every worm its own label (e.g. start from the Segment widget's result with "
                "'Correct this result')"
            )


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
    """``name`` with anything but letters, digits, ``-``, ``_`` and ``.`` made ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return cleaned or "finetuned"


def _out_dir(spec: FineTuneSpec) -> Path:
    from napari_semiconv.core.model_store import user_model_dir

    return Path(spec.out_dir).expanduser() if spec.out_dir else user_model_dir()


def output_path(spec: FineTuneSpec) -> Path:
    """Where the new model goes: ``<out_dir>/<name>.pt``; without ``resume`` a name already
    taken gets ``-2``, ``-3``… (nothing is ever overwritten)."""
    stem = safe_name(spec.name or f"{Path(str(spec.base)).stem}-finetuned")
    folder = _out_dir(spec)
    path = folder / f"{stem}.pt"
    if spec.resume:
        return path
    k = 2
    while path.exists() or _data_dir(path).exists():
        path = folder / f"{stem}-{k}.pt"
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
    the validation pair, which the CLI does not take)."""
    args = ["napari-semiconv", "train", "--base", str(spec.base)]
    args += ["--layout", "folders", "--data", str(config.data_root or "<images+labels folder>")]
    args += ["--out", str(config.out), "--iterations", str(config.iterations)]
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
    from napari_semiconv.core.checkpoint import load_checkpoint
    from napari_semiconv.core.model_store import resolve_model_path
    from napari_semiconv.core.training import TrainConfig

    check_spec(spec)
    out = output_path(spec)
    source = str(out) if spec.resume else spec.base
    model = load_checkpoint(resolve_model_path(source)[0]).config
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
