"""The Segment widget's run, as a generator for ``napari.qt.threading`` (no Qt in here).

The generator yields a :class:`RunUpdate` per tile and per plane, so ``worker.quit()`` cancels
at the next tile; it returns a :class:`RunResult` holding everything the GUI thread needs
(the views to show, the instance stacks to export, the run settings). torch and the core
inference module are imported only when a run starts.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.tiling import default_overlap
from ..core.visualise import LayerViews, build_views, iter_planes, leading_shape


@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs, captured on the GUI thread when Segment is clicked."""

    image_name: str
    data: Any  # the layer's data with the chosen channel taken: (*leading, H, W[, 3|4])
    rgb: bool
    model: str  # bundled/user model name or checkpoint path
    device: str  # "auto", "cpu", "cuda:0", "mps"
    score_threshold: float
    mask_threshold: float
    max_overlap: float
    tile_size: int | None  # None: the core picks (tiles only large images)
    stride: int
    views: int = 1  # test-time augmentation (core.tta): 1 = off
    rescale: float = 1.0  # the image resized by this before the network (core.rescale)
    foreground_threshold: float | None = None  # a bright-field cascade's U-Net cut; else None
    scale: tuple[float, ...] = ()  # world geometry of the outputs (the layer's, less the channel)
    # the layer's y/x unit (napari's Layer.units, core.pixel_size.pixel_unit_of); None: pixels
    pixel_unit: str | None = None
    translate: tuple[float, ...] = ()
    transform: dict[str, Any] = field(default_factory=dict)  # rotate/shear/affine (kept_transform)
    metadata: dict[str, Any] = field(default_factory=dict)  # the layer's, copied to the outputs
    channel_axis: int | None = None  # of the layer's data, for the run record
    channel: int | None = None
    source: dict[str, Any] = field(default_factory=dict)  # image description for run_info


@dataclass
class RunUpdate:
    """Progress: ``done`` of ``total`` steps (tiles over all planes; total 0 = unknown)."""

    done: int
    total: int
    text: str


@dataclass
class RunResult:
    """What a finished run hands to the GUI thread."""

    request: RunRequest
    planes: list[tuple[tuple[int, ...], Any]]  # (plane index, core.inference.Instances)
    leading: tuple[int, ...]
    views: LayerViews
    run_info: dict[str, Any]
    device: str  # the device that actually ran the model
    seconds: float
    warnings: list[str] = field(default_factory=list)  # e.g. a tile at the model's worm limit

    @property
    def n_worms(self) -> int:
        return int(sum(len(inst.scores) for _, inst in self.planes))


class ModelCache:
    """Keeps the last loaded model so re-runs with the same model and device skip loading."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.model: Any = None

    def get(self, name_or_path: str, device: str) -> Any:
        from ..core.inference import load_model
        from ..core.model_store import resolve_model_path

        path = resolve_model_path(name_or_path)[0]
        stat = path.stat()
        # the file's size and time are part of the key: a model re-saved under the same name
        # (e.g. by fine-tuning) is loaded afresh
        key = (name_or_path, device, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if self.key != key or self.model is None:
            self.model, self.key = None, None  # free the old one before loading the next
            self.model = load_model(name_or_path, device=device)
            self.key = key
        return self.model


def _model_device(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError):
        return "cpu"


class SegmentationError(Exception):
    """A failure inside the run (e.g. torch out of memory), with a message for the user.

    superqt's worker treats a ``RuntimeError`` escaping the generator as "worker deleted" and
    drops it silently, so torch's RuntimeErrors are re-raised as this type to reach the GUI.
    """


def run_segmentation(
    request: RunRequest, cache: ModelCache
) -> Generator[RunUpdate, None, RunResult]:
    """Segment every plane of ``request.data``; yields progress, returns the result."""
    try:
        result = yield from _run(request, cache)
    except RuntimeError as exc:
        hint = ""
        if "out of memory" in str(exc).lower():  # torch.OutOfMemoryError (CUDA or MPS)
            hint = "; set a smaller Tile size, or choose the cpu Device"
        raise SegmentationError(f"{type(exc).__name__}: {exc}{hint}") from exc
    return result


def _run(request: RunRequest, cache: ModelCache) -> Generator[RunUpdate, None, RunResult]:
    from ..core import inference

    start = time.perf_counter()
    leading = leading_shape(request.data.shape, request.rgb)
    n_planes = int(np.prod(leading)) if leading else 1
    yield RunUpdate(0, 0, f"loading model {request.model}")
    model = cache.get(request.model, request.device)
    device = _model_device(model)
    settings = {
        "score_threshold": request.score_threshold,
        "mask_threshold": request.mask_threshold,
        "max_overlap": request.max_overlap,
        "foreground_threshold": request.foreground_threshold,
        "divide_touching": True,  # recorded: `predict --from-run` replays older runs without it
        "tile_size": request.tile_size,
        "overlap": default_overlap(request.tile_size),
        "views": request.views,
        "rescale": request.rescale,
    }
    planes: list[tuple[tuple[int, ...], Any]] = []
    notes: list[str] = []
    for p, (index, plane) in enumerate(iter_planes(request.data, request.rgb)):
        where = f"plane {p + 1}/{n_planes}" if leading else "image"
        steps = inference.segment_steps(model, plane, **settings)
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                instances = stop.value
                break
            if step.warning and f"{where}: {step.message}" not in notes:
                notes.append(f"{where}: {step.message}")
            # every plane has the same shape, hence the same number of tiles
            yield RunUpdate(
                p * step.total + step.done, n_planes * step.total, f"{where}: {step.message}"
            )
        planes.append((tuple(index), instances))
    yield RunUpdate(0, 0, "building layers")
    views = build_views(planes, leading, stride=request.stride)
    info = inference.run_info(model, settings, device=device)
    info["image"] = dict(request.source)
    return RunResult(
        request=request,
        planes=planes,
        leading=tuple(leading),
        views=views,
        run_info=info,
        device=device,
        seconds=time.perf_counter() - start,
        warnings=notes,
    )
