"""The widgets open inside a running napari that has not loaded torch yet (plugin._torch_import).

Run in a fresh process: this test session loaded torch and torchvision before Qt (conftest), which
is exactly what a user's napari does not do. Without the guard, opening the Segment widget there
killed napari with a segmentation fault (triton loaded after Qt's OpenGL). The script opens both
widgets and segments as a click does, in a worker thread.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SCRIPT = """
import sys, time
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=False)
assert "torch" not in sys.modules and "triton" not in sys.modules
from napari_semiconv.plugin.segment_widget import SegmentWidget
from napari_semiconv.plugin.finetune_widget import FineTuneWidget
from napari_semiconv.core.synthetic.worms import synthetic_worms
widget = SegmentWidget(viewer)
FineTuneWidget(viewer)
image, _ = synthetic_worms(seed=1, shape=(128, 160), render="brightfield")
viewer.add_image(image, name="well")
assert widget.set_model("worms-brightfield")
widget.device_combo.setCurrentText("cpu")
assert widget.segment() is not None  # the run, in a worker thread, as a user's click
start = time.monotonic()
while widget.running and time.monotonic() - start < 240:
    QApplication.processEvents()
    time.sleep(0.02)
print("OK", "well worms" in viewer.layers, len(viewer.layers["well worms"].features),
      sys.modules.get("triton", "loaded"))
viewer.close()
"""


def test_the_widgets_open_in_a_napari_that_started_without_torch():
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X server (run the tests under xvfb-run)")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("OK True") and done.stdout.strip().endswith("None")
    assert int(done.stdout.split()[2]) > 0  # worms found and shown
