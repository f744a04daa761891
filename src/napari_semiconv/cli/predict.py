"""`napari-semiconv predict`: segment image files and write the four outputs of each run.

For every IMAGE: ``<stem>_labels.tif``, ``<stem>_instances.tif``, ``<stem>_measurements.csv`` and
``<stem>_run.json`` in --out (``core.export.write_run_outputs``; existing files are never
overwritten). ``--from-run RUN.json`` takes the model and settings from a run record, as written
by this command or by the napari widget's Export, so a GUI run can be replayed exactly. A TIFF
image's pixel size (its resolution) is carried into the output TIFFs and the run record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_semiconv.cli.common import noting_runtime_warnings
from napari_semiconv.core.refine import postprocess_defaults_of

#: Settings recorded in a run record and replayed by --from-run, with their defaults (None: the
#: model's own, ``core.refine.postprocess_defaults_of``, recorded as numbers). A record
#: from before max_overlap existed is replayed as that run was made: no mask-overlap suppression
#: and no use of a binary input's foreground; one from before divide_touching, without it.
#: foreground_threshold (a bright-field cascade's U-Net cut) is recorded as a number for a
#: cascade and None for other models.
DEFAULTS = {
    "score_threshold": None,
    "mask_threshold": None,
    "max_overlap": None,
    "foreground_threshold": None,
    "use_foreground": True,
    "divide_touching": True,
    "tile_size": None,
    "overlap": None,  # core.tiling.default_overlap of the tile size
    "batch_size": 1,
    "views": 1,
    "rescale": 1.0,
}


NO_FOREGROUND_HELP = (
    "binary-input models and bright-field cascades: do not clip worms to the foreground (the "
    "binary input, or the cascade's U-Net map), nor give a lone worm its whole blob, nor share "
    "out touching worms; no effect on other bright-field models"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="segment images and write labels, instances, measurements and a run record",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF/PNG/JPEG images")
    p.add_argument("--model", help="model name (see `models`) or checkpoint path")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--mask-threshold", type=float)
    p.add_argument(
        "--max-overlap",
        type=float,
        help="drop the lower-scoring of two worms whose masks overlap above this IoU (1: keep)",
    )
    p.add_argument(
        "--foreground-threshold",
        type=float,
        help="bright-field cascades: a pixel is worm where the foreground network's probability "
        "exceeds this (default: the model's own; worms-brightfield 0.6)",
    )
    p.add_argument(
        "--no-foreground",
        dest="use_foreground",
        action="store_const",
        const=False,
        help=NO_FOREGROUND_HELP,
    )
    p.add_argument(
        "--no-divide",
        dest="divide_touching",
        action="store_const",
        const=False,
        help="keep the thresholded masks of touching worms as they are (default: each pixel "
        "that several worms or none claim in their foreground blob goes to one worm)",
    )
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default: automatic)")
    p.add_argument(
        "--overlap",
        type=int,
        help="tile overlap in pixels, under half the tile size (default 64, less for tiles "
        "under 130 px)",
    )
    p.add_argument(
        "--views",
        type=int,
        choices=(1, 2, 4, 8),
        help="test-time augmentation: segment this many flipped/transposed views of each image "
        "and fuse their worms (more accurate outlines, one network pass per view; default 1)",
    )
    p.add_argument(
        "--rescale",
        type=float,
        help="resize each image by this factor before the network, for worms imaged larger or "
        "smaller than the model's training images (0.5 for worms twice as large; the outputs "
        "keep the image's size; default 1)",
    )
    p.add_argument("--from-run", metavar="RUN.json", help="replay the model + settings of a run")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip the images whose four outputs are in --out already (go on with a batch "
        "that was interrupted); without it any existing output refuses the whole batch",
    )
    p.set_defaults(
        run=run,
        interrupted_note="the images done have their four files, complete; add --skip-existing "
        "to the same command to go on with the others",
    )
    return p


def check_image_path(path: str | Path) -> Path:
    """``path`` as a Path, if it is a file; a folder or a missing file is refused by name."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a folder; give image files (e.g. {path}/*.tif)")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return path


def read_image(path: str | Path) -> np.ndarray:
    """An image file as an array (the core's reader, which names a damaged file)."""
    from napari_semiconv.core.data.folders import read_image as read_pixels

    return read_pixels(check_image_path(path))


def _read_record(path: str) -> dict:
    """The run record ``--from-run`` names, its "model" and "settings" checked to be objects
    (a hand-edited record gave an AttributeError; settings [1, 2] replayed as an old run)."""
    from napari_semiconv.core.export import read_run_json

    if Path(path).is_dir() or not Path(path).is_file():
        raise FileNotFoundError(f"--from-run {path}: no such run record (a *_run.json file)")
    record = read_run_json(path)
    for key in ("model", "settings"):
        if key in record and not isinstance(record[key], dict):
            raise ValueError(
                f"--from-run {path}: its {key!r} is a JSON {type(record[key]).__name__}, not "
                "an object; is this a run record written by napari-semiconv?"
            )
    return record


def _recorded_plane(image: np.ndarray, record: dict, path: str) -> np.ndarray:
    """The plane of ``image`` a run segmented: a Segment widget's run on a stack or a
    multi-channel image records the channel it took (``image``: ``channel_axis``,
    ``channel``) and, exported per plane, the plane (``plane``); a 2-D image is itself."""
    from napari_semiconv.core.visualise import select_channel

    source = record.get("image") if isinstance(record.get("image"), dict) else {}
    axis, channel, plane = source.get("channel_axis"), source.get("channel"), record.get("plane")
    if axis is None and plane is None:
        return image
    shape = source.get("shape")
    if shape is not None and list(image.shape) != list(shape):
        raise ValueError(
            f"{path} has shape {tuple(image.shape)} but the run segmented an image of shape "
            f"{tuple(shape)}; replay it on the image the run was made on"
        )
    try:
        image = np.asarray(select_channel(image, axis, channel))
        if plane is not None:
            image = image[tuple(int(i) for i in plane)]
    except (IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"the run record's channel or plane does not fit {path}: {exc}") from exc
    return image


def _loads_by_name(name: object, kind: object, path: object, sha: object) -> bool:
    """Whether the recorded model ``name`` loads the run's model as the ``kind`` it was: a
    bundled name whose registry sha256 is the recorded one, or a user-model name that still
    takes us to the recorded file. Loaded by name, the replay's record names the model as the
    original did, and replays on another install, where the files lie elsewhere."""
    from napari_semiconv.core.model_store import ModelNotFoundError, resolve_model_path

    if kind not in ("bundled", "user") or not isinstance(name, str) or not name:
        return False
    try:
        file, expected, found = resolve_model_path(name)
    except ModelNotFoundError:  # e.g. a bundled model this install lacks
        return False
    if found != kind:
        return False
    if kind == "bundled":
        # another package version may bundle other weights under the same name
        return bool(sha) and expected == sha
    return isinstance(path, str) and file.resolve() == Path(path).resolve()


def _bundled_with_sha(sha: object) -> str | None:
    """The bundled model whose registry sha256 is ``sha``, if one is installed: the same file as
    the one a record names by a path that is gone (replays before bundled names were kept
    recorded the bundled file's path)."""
    from napari_semiconv.core.model_store import BUNDLED_DIR, registry

    if not sha:
        return None
    for name, entry in sorted(registry().items()):
        installed = (BUNDLED_DIR / str(entry.get("file", f"{name}.pt"))).is_file()
        if entry.get("sha256") == sha and installed:
            return name
    return None


def _model_from_run(record: dict, device: str):
    """Load the run's model and check its sha256: a bundled or user model by its recorded name
    where that name still loads the same model (:func:`_loads_by_name`), else its recorded file,
    else its name; a record whose file and name are both gone falls back to the bundled model
    of the recorded sha256 (:func:`_bundled_with_sha`)."""
    from napari_semiconv.core.inference import load_model
    from napari_semiconv.core.model_store import resolve_model_path

    info = record.get("model") or {}
    path, name, sha = info.get("path"), info.get("name"), info.get("sha256")
    if _loads_by_name(name, info.get("kind"), path, sha):
        target = name
    else:
        target = path if path and Path(path).is_file() else name
        try:
            if target:
                resolve_model_path(target)
        except (FileNotFoundError, TypeError):
            # nothing loads by the recorded file or name (another machine): the bundled model
            # with the recorded sha256 is that very file; none such keeps the error below
            target = _bundled_with_sha(sha) or target
    if not target:
        raise ValueError("the run record names no model (its 'model' entry has no path or name)")
    model = load_model(target, device=device)
    if sha and model.source.get("sha256") != sha:
        raise ValueError(
            f"the model {target} is not the one the run used (sha256 {model.source['sha256']} "
            f"!= {sha}); find the original file or pass --model to run with another"
        )
    return model


def run(args: argparse.Namespace) -> int:
    from napari_semiconv.core.export import read_tiff_pixel_size, write_run_outputs
    from napari_semiconv.core.inference import load_model, run_info, segment
    from napari_semiconv.core.model.run_modes import check_foreground_cut
    from napari_semiconv.core.tiling import default_overlap

    settings = dict(DEFAULTS)
    if args.from_run:
        record = _read_record(args.from_run)
        recorded = record.get("settings") or {}
        settings.update({k: recorded[k] for k in DEFAULTS if k in recorded})
        if "max_overlap" not in recorded:
            settings.update(max_overlap=1.0, use_foreground=False)
        if "divide_touching" not in recorded:
            settings.update(divide_touching=False)
        if "score_threshold" not in recorded:  # before the defaults depended on the model
            settings.update(score_threshold=0.5)
        if args.model:  # an explicit --model replaces the recorded one
            model = load_model(args.model, device=args.device)
        else:
            model = _model_from_run(record, args.device)
    elif args.model:
        model = load_model(args.model, device=args.device)
    else:
        raise ValueError("give --model (a name or checkpoint path) or --from-run RUN.json")
    for key in (
        "score_threshold",
        "mask_threshold",
        "max_overlap",
        "foreground_threshold",
        "use_foreground",
        "divide_touching",
        "tile_size",
        "overlap",
        "views",
        "rescale",
    ):
        value = getattr(args, key)
        if value is not None:  # an explicit flag wins over the run record
            settings[key] = value
    for key, value in postprocess_defaults_of(model.config.postprocess_kind, model.card).items():
        if settings[key] is None:
            settings[key] = value
    if not model.config.foreground_width and args.foreground_threshold is None:
        settings["foreground_threshold"] = None  # a cascade's record replayed with another model
    elif settings["foreground_threshold"] is None:
        settings["foreground_threshold"] = model.config.foreground_threshold
    if settings["overlap"] is None:  # the GUI's rule: 64 px, less for small tiles
        settings["overlap"] = default_overlap(settings["tile_size"])
    # before any image is read (a cut given for a model without a U-Net is refused here)
    check_foreground_cut(model, settings["foreground_threshold"], "--foreground-threshold")
    _check_settings(
        settings, given={key for key in DEFAULTS if getattr(args, key, None) is not None}
    )
    out = Path(args.out)
    stems = [check_image_path(p).stem for p in args.images]
    if len(set(stems)) != len(stems):
        raise ValueError("two images share a file stem; their outputs would collide")
    # a batch is refused whole, not half-way through
    done = _check_outputs(out, stems, args.skip_existing)
    for i, image_path in enumerate(args.images):
        if Path(image_path).stem in done:
            print(f"[{i + 1}/{len(args.images)}] {image_path}: outputs exist, skipped", flush=True)
            continue
        image = read_image(image_path)  # a read error names the file already
        if args.from_run:
            image = _recorded_plane(image, record, image_path)
        try:
            instances, notes = noting_runtime_warnings(
                lambda image=image: segment(model, image, **settings)
            )
            pixel = None
            if Path(image_path).suffix.lower() in (".tif", ".tiff"):
                pixel = read_tiff_pixel_size(image_path)
        except (ValueError, TypeError, OSError) as exc:
            # name the file: with several images the user must know which one failed
            raise ValueError(f"{image_path}: {exc}") from exc
        info = run_info(model, settings)
        info["image"] = {"path": str(Path(image_path).resolve()), "shape": list(image.shape)}
        paths = write_run_outputs(
            out,
            Path(image_path).stem,
            instances,
            info,
            pixel_size=None if pixel is None else (pixel.y, pixel.x),
            pixel_unit=None if pixel is None else pixel.unit,
        )
        print(
            f"[{i + 1}/{len(args.images)}] {image_path}: {len(instances)} worms -> "
            f"{paths['labels'].parent}",
            flush=True,
        )
        for note in notes:
            print(f"  warning: {note}", file=sys.stderr, flush=True)
    return 0


def _check_settings(settings: dict, given: set[str]) -> None:
    """Refuse a bad setting before any image is read, naming its flag (or the run record), so
    the error is not blamed on the first image."""
    from napari_semiconv.core.rescale import check_rescale
    from napari_semiconv.core.tiling import check_tiling
    from napari_semiconv.core.tta import views_of

    def name(key: str) -> str:
        return f"--{key.replace('_', '-')}" if key in given else f"the run record's {key}"

    for key in ("score_threshold", "mask_threshold", "max_overlap"):
        if not 0.0 <= float(settings[key]) <= 1.0:
            raise ValueError(f"{name(key)} must be in [0, 1], got {settings[key]}")
    check_tiling(settings["tile_size"], settings["overlap"], name("tile_size"), name("overlap"))
    try:
        views_of(settings["views"])
    except ValueError as exc:
        raise ValueError(f"{name('views')}: {exc}") from exc
    check_rescale(settings["rescale"], name("rescale"))


def _check_outputs(out: Path, stems: list[str], skip_existing: bool = False) -> set[str]:
    """Refuse a --out that cannot be a folder, or any output that exists, before any work.
    ``skip_existing``: the stems whose four outputs all exist are returned, to be skipped (a
    batch interrupted half-way goes on); only some of the four existing is still refused."""
    from napari_semiconv.core.export import existing_outputs, output_paths

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    above = next(p for p in (out, *out.parents) if p.exists())  # where --out would be created
    if not above.is_dir():
        raise NotADirectoryError(f"cannot create --out {out}: {above} is a file, not a folder")
    done: set[str] = set()
    if skip_existing:
        done = {s for s in stems if all(p.exists() for p in output_paths(out, s).values())}
    existing = [str(p) for p in existing_outputs(out, [s for s in stems if s not in done])]
    if existing:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise FileExistsError(
            f"refusing to overwrite existing output(s): {', '.join(existing[:3])}{more}; "
            "choose another --out folder or remove them"
            + ("" if skip_existing else " (--skip-existing goes on with the images without)")
        )
    return done
