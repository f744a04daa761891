"""Export of a Segment widget run: the four files of ``napari-semiconv predict`` per plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._workers import RunResult

# a typed ".tif" (or another of the outputs' extensions) is dropped: the stem gets the suffixes
_EXTENSIONS = (".tif", ".tiff", ".csv", ".json")


def plane_stem(stem: str, index: tuple[int, ...]) -> str:
    """``<stem>_plane<i>`` (``<stem>_plane<i>-<j>`` for 4-D) for one plane of a stack."""
    return f"{stem}_plane{'-'.join(str(i) for i in index)}"


def export_result(
    result: RunResult, path_stem: Path, edited: Any = None, edited_layer: str | None = None
) -> dict[str, Path]:
    """Write labels TIFF, instance-stack TIFF, measurements CSV and run JSON for ``result``.

    ``edited``: the worms layer's data when the user has corrected it since the run (2-D, or
    the stack's shape): the files then hold the corrected worms (``core.edited``), and the run
    JSON says which worms were changed, added or removed (``edited``, with ``edited_layer``).

    A 2-D image gives ``<stem>_labels.tif`` etc.; a stack one set per plane (:func:`plane_stem`).
    Every target is checked first: if any exists, FileExistsError names them and nothing is
    written. If writing fails part-way (disk full), the files of the planes already written are
    removed too, so a failed export leaves nothing and the same export can be retried.
    Returns {key: path}; keys are labels/instances/measurements/run, prefixed with ``plane<i>/``
    for stacks.

    The image layer's scale (y and x, captured in the run request) goes into the TIFFs'
    resolution and the run JSON's ``pixel_size``, so the files line up with the image again; its
    unit (napari's ``Layer.units``, unless the default "pixel") into the run JSON's
    ``pixel_unit`` and, for a length, the TIFFs' resolution unit (``core.export``).
    """
    from ..core.edited import apply_label_edits
    from ..core.export import output_paths, pixel_size_from_scale, write_run_outputs

    path_stem = Path(path_stem)
    out_dir, stem = path_stem.parent, path_stem.name
    if stem.lower().endswith(_EXTENSIONS):
        stem = stem.rsplit(".", 1)[0]
    jobs = [
        (plane_stem(stem, index) if result.leading else stem, index, instances)
        for index, instances in result.planes
    ]
    if edited is not None:
        edited = np.asarray(edited)
        # each plane's worms after the user's edits, checked before any file is written; the
        # layer numbers the worms on across planes (core.visualise.build_views)
        offsets = np.cumsum([0] + [len(found) for _, _, found in jobs])
        jobs = [
            (name, index, apply_label_edits(found.masks, found.scores, edited[index], offset))
            for (name, index, found), offset in zip(jobs, offsets.tolist(), strict=False)
        ]
    existing = [
        str(p) for name, _, _ in jobs for p in output_paths(out_dir, name).values() if p.exists()
    ]
    if existing:
        raise FileExistsError(
            f"refusing to overwrite {len(existing)} existing file(s), e.g. {existing[0]}; "
            "choose another folder or name"
        )
    # the outputs' world geometry is the image layer's, less the channel (RunRequest.scale)
    pixel_size = pixel_size_from_scale(result.request.scale)
    # a request made before RunRequest carried the unit (or a stand-in without it): no unit
    pixel_unit = getattr(result.request, "pixel_unit", None) if pixel_size else None
    written: dict[str, Path] = {}
    try:
        for name, index, instances in jobs:
            info: dict[str, Any] = dict(result.run_info)
            if result.leading:
                info["plane"] = list(index)
            if edited is not None:
                # the files no longer hold only what the run found: say what the user changed
                info["edited"] = {"layer": edited_layer, **instances.summary()}
            paths = write_run_outputs(
                out_dir,
                name,
                masks=instances.masks,
                scores=instances.scores,
                run_info=info,
                pixel_size=pixel_size,
                pixel_unit=pixel_unit,
            )
            prefix = f"{name[len(stem) + 1 :]}/" if result.leading else ""
            written.update({f"{prefix}{key}": path for key, path in paths.items()})
    except BaseException:
        # every target was checked absent above, so these files are this export's own
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    return written
