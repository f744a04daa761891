"""A small live loss curve for the Fine-tune widget (matplotlib's Qt canvas).

matplotlib is imported when the curve is built, not when napari imports the plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtWidgets import QSpinBox, QVBoxLayout, QWidget


class LossCurve(QWidget):
    """Total training loss against step; ``steps``/``values`` hold the plotted points."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.steps: list[int] = []
        self.values: list[float] = []
        self.figure = Figure(figsize=(3.2, 1.8), tight_layout=True)
        self.figure.patch.set_alpha(0.0)  # sits on napari's dark or light theme alike
        self.axes = self.figure.add_subplot()
        self.axes.set_xlabel("step", fontsize=8, color="grey")
        self.axes.set_ylabel("loss", fontsize=8, color="grey")
        self.axes.tick_params(labelsize=7, colors="grey")
        self.axes.set_facecolor("none")
        (self.line,) = self.axes.plot([], [], color="#f0a030", lw=1.2)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(140)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def __len__(self) -> int:
        return len(self.steps)

    def clear(self) -> None:
        self.set_data([], [])

    def set_data(self, steps: Sequence[int], values: Sequence[float]) -> None:
        """Replace the curve (e.g. a resumed run's history)."""
        self.steps, self.values = [int(s) for s in steps], [float(v) for v in values]
        self._redraw()

    def add(self, step: int, value: float) -> None:
        """Append one point and redraw (lazily: Qt repaints when the event loop is free)."""
        self.steps.append(int(step))
        self.values.append(float(value))
        self._redraw()

    def _redraw(self) -> None:
        self.line.set_data(self.steps, self.values)
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()


def spin_box(low: int, high: int, value: int, tip: str) -> QSpinBox:
    """An integer field with its range, value and tooltip set."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def format_metric(value: Any) -> str:
    """A metric for display: three decimals, or "n/a" when there is none."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
