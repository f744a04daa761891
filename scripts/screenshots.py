"""Screenshots of the Segment widget for docs/user-guide.md (run under a real or virtual X server).

    xvfb-run -a python scripts/screenshots.py                      # bundled worms-brightfield model
    xvfb-run -a python scripts/screenshots.py --model path/to/model.pt --score-threshold 0.3

Opens napari, loads the bright-field sample (File > Open Sample > Semi-convolutional worms),
opens the Segment widget from the plugin manifest, segments, and saves into docs/images/:
``segment-widget.png`` (the whole window), ``worms-labels.png``, ``displacement-arrows.png``
(a zoomed view of the arrows u → u + Φ_u) and ``votes.png`` (the Hough accumulator).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch  # noqa: F401  (before Qt: importing torch after a QApplication exists can crash)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = "worms-brightfield"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=f"model name or checkpoint path (default: {BUNDLED})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--sample", default="worms-brightfield", help="napari-semiconv sample key")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--mask-threshold", type=float, default=None)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    return parser.parse_args(argv)


def _choose_model(requested: str | None) -> str:
    from napari_semiconv.core.inference import list_models

    if requested:
        return requested
    installed = {row["name"] for row in list_models() if row.get("installed")}
    if BUNDLED in installed:
        return BUNDLED
    sys.exit(f"the bundled model {BUNDLED!r} is not installed here: pass --model PATH")


def _wait(app, widget, timeout: float) -> None:
    end = time.monotonic() + timeout
    while widget.running:
        if time.monotonic() > end:
            widget.cancel()
            sys.exit(f"the run took longer than {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas draw the new layers
        app.processEvents()
        time.sleep(0.02)
    _dismiss_notifications()


def _dismiss_notifications() -> None:
    """Close napari's pop-up notices (e.g. backend deprecation) so they stay out of the shots."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for notice in QApplication.allWidgets():
        if isinstance(notice, NapariQtNotification):
            notice.close()


def _open_sample(viewer, key: str):
    """The plugin's sample (as a user opens it); the same synthetic scene if it is not listed."""
    try:
        viewer.open_sample("napari-semiconv", key)
    except (KeyError, ValueError, RuntimeError, ImportError) as exc:  # sample not installed
        from napari_semiconv.core.synthetic.worms import synthetic_worms

        print(f"sample {key!r} not available ({exc}); rendering a synthetic well", file=sys.stderr)
        image, _ = synthetic_worms(seed=0, render="binary" if "binary" in key else "brightfield")
        viewer.add_image(image, name=key)
    from napari.layers import Image

    for layer in viewer.layers:  # the sample's ground truth would hide the result: hide it
        if not isinstance(layer, Image):
            layer.visible = False
    return [layer for layer in viewer.layers if isinstance(layer, Image)][-1]


def _open_widget(viewer):
    """The Segment widget from the plugin manifest (Plugins > Semi-convolutional worms)."""
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-semiconv", "Segment")
    except (KeyError, ValueError, RuntimeError, ImportError) as exc:  # not a napari plugin here
        from napari_semiconv.plugin.segment_widget import SegmentWidget

        print(f"plugin widget not found ({exc}); docking it directly", file=sys.stderr)
        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Segment")
    return widget


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    model = _choose_model(args.model)

    import napari
    from qtpy.QtWidgets import QApplication

    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-semiconv")
    viewer.window.resize(1500, 950)
    image = _open_sample(viewer, args.sample)
    widget = _open_widget(viewer)
    widget.set_model(model)
    if args.score_threshold is not None:
        widget.score_spin.setValue(args.score_threshold)
    if args.mask_threshold is not None:
        widget.mask_spin.setValue(args.mask_threshold)
    widget.stride_spin.setValue(args.stride)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText(image.name))
    app = QApplication.instance()
    if widget.segment() is None:
        return 1
    _wait(app, widget, args.timeout)
    if widget.last_result is None:
        print(f"no result: {widget.result_label.text()}", file=sys.stderr)
        return 1
    print(widget.result_label.text())

    names = {kind: f"{image.name} {kind}" for kind in ("worms", "displacement", "votes")}
    labels, arrows, votes = (viewer.layers[names[k]] for k in ("worms", "displacement", "votes"))
    viewer.layers.selection.active = labels
    viewer.reset_view()
    _wait(app, widget, 1)
    viewer.screenshot(str(args.out / "segment-widget.png"), canvas_only=False)

    arrows.visible = False
    viewer.screenshot(str(args.out / "worms-labels.png"), canvas_only=True)

    # arrows: zoom onto the busiest part of the votes so single arrows are visible
    arrows.visible, labels.opacity = True, 0.35
    peak = tuple(int(i) for i in divmod(int(votes.data.argmax()), votes.data.shape[-1]))
    world = [
        p * s + t for p, s, t in zip(peak, image.scale[-2:], image.translate[-2:], strict=True)
    ]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
    camera.center = tuple(world)
    camera.zoom = camera.zoom * 3
    _wait(app, widget, 1)
    viewer.screenshot(str(args.out / "displacement-arrows.png"), canvas_only=True)

    viewer.reset_view()
    arrows.visible, labels.visible, votes.visible = False, False, True
    _wait(app, widget, 1)
    viewer.screenshot(str(args.out / "votes.png"), canvas_only=True)
    for name in ("segment-widget", "worms-labels", "displacement-arrows", "votes"):
        print(args.out / f"{name}.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
