"""Running a fine-tune: a time budget around the trainer, and the loss curve kept beside the model.

- :func:`train_with_budget` stops a run after a time budget, at the first checkpoint after the
  deadline, so the work done is kept;
- :class:`LossHistory` is the loss curve (total and each component), saved as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LossHistory", "train_with_budget"]


def train_with_budget(
    config: Any, minutes: float = 0.0, clock: Callable[[], float] = time.monotonic
) -> Iterator[Any]:
    """:func:`~napari_semiconv.core.training.train`'s events, stopped by a time budget.

    Once ``minutes`` (> 0) have passed, the run goes on to its next checkpoint (at most
    ``config.checkpoint_every`` steps), yields it, then a final "done" event whose message says
    the budget stopped it; so the time spent is never thrown away. ``minutes=0``: no budget.
    """
    from napari_semiconv.core.training import TrainProgress, train

    deadline = clock() + 60.0 * minutes if minutes > 0 else math.inf
    events = train(config)
    try:
        for event in events:
            yield event
            if event.phase == "checkpoint" and clock() >= deadline:
                if event.checkpoint and Path(event.checkpoint) == Path(config.out):
                    yield TrainProgress(
                        event.iteration,
                        event.total,
                        "done",
                        message=f"time budget of {minutes:g} min reached at step "
                        f"{event.iteration}; that checkpoint is kept (Resume continues it)",
                    )
                    return
    finally:
        events.close()  # the trainer's clean-up (process group) runs now, not at GC


# ---------------------------------------------------------------------------- loss history
@dataclass
class LossHistory:
    """The loss curve of a run: total loss and each component per step; JSON beside the model."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    components: dict[str, list[float]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: Any) -> bool:
        """Record a trainer event; True when it added a point to the curve."""
        if event.phase == "val" and event.metrics:
            self.metrics.append({"step": int(event.iteration), **_plain_metrics(event.metrics)})
            return False
        if event.phase != "train" or "loss" not in event.losses:
            return False
        self.steps.append(int(event.iteration))
        self.loss.append(float(event.losses["loss"]))
        for key, value in event.losses.items():
            if key != "loss":
                self.components.setdefault(key, []).append(float(value))
        return True

    def truncate(self, step: int) -> None:
        """Keep the points up to ``step`` (a resumed run continues from its checkpoint)."""
        keep = sum(s <= step for s in self.steps)
        self.steps, self.loss = self.steps[:keep], self.loss[:keep]
        self.components = {k: v[:keep] for k, v in self.components.items()}
        self.metrics = [m for m in self.metrics if m.get("step", 0) <= step]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossHistory:
        steps, loss = list(data.get("steps", [])), list(data.get("loss", []))
        if len(steps) != len(loss):
            raise ValueError("a loss history needs as many steps as loss values")
        return cls(steps, loss, dict(data.get("components", {})), list(data.get("metrics", [])))

    def save(self, path: str | Path) -> Path:
        """Write the history as JSON, atomically (replacing the previous one)."""
        from napari_semiconv.core.atomic import atomic_write_bytes

        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        return atomic_write_bytes(path, text.encode("utf-8"), overwrite=True)

    @classmethod
    def load(cls, path: str | Path) -> LossHistory:
        """The history saved at ``path``; an empty one when there is none."""
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path} is not a loss history ({exc}); delete or rename it") from exc


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value):
            out[key] = float(value)
        elif value is None or isinstance(value, str):
            out[key] = value
    return out
