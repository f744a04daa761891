"""The widgets open inside a running napari that has not loaded torch yet (plugin._torch_import).

Run in a fresh process: this test session loaded torch and torchvision before Qt (conftest), which
is exactly what a user's napari does not do. Without the guard, opening the Segment widget there
killed napari with a segmentation fault (triton loaded after Qt's OpenGL).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SCRIPT = """
import sys
import napari
viewer = napari.Viewer(show=False)
assert "torch" not in sys.modules and "triton" not in sys.modules
from napari_semiconv.plugin.segment_widget import SegmentWidget
from napari_semiconv.plugin.finetune_widget import FineTuneWidget
segment = SegmentWidget(viewer)
FineTuneWidget(viewer)
from napari_semiconv.core.inference import load_model, segment as run
from napari_semiconv.core.synthetic.worms import synthetic_worms
image, _ = synthetic_worms(seed=1, shape=(128, 128), render="brightfield")
found = run(load_model("worms-brightfield", device="cpu"), image)
print("OK", segment.model_choice(), len(found), sys.modules.get("triton", "loaded"))
viewer.close()
"""


def test_the_widgets_open_in_a_napari_that_started_without_torch():
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X server (run the tests under xvfb-run)")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK worms-" in done.stdout and done.stdout.strip().endswith("None")
