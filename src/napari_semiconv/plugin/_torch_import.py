"""Importing torch inside a running napari without crashing it.

napari starts Qt (and its OpenGL, here Mesa's) before a plugin widget is built, and the widgets
are where this plugin first needs torch. torch itself loads fine after Qt, but torchvision
imports ``torch._dynamo``, which imports triton (torch's GPU kernel compiler) if it is
installed, and loading triton's native library after Qt's OpenGL kills the process with a
segmentation fault (seen with torch 2.14 / triton on Debian under Xvfb + Mesa;
tests/test_torch_import.py). This plugin never compiles kernels (eager mode only), so when
triton is not loaded yet and a Qt application is running, triton is marked unavailable for this
process before torchvision loads: torch and torchvision then run without it. A process that
loaded them before Qt (the CLI, scripts, the tests) is left alone.
"""

from __future__ import annotations

import sys


def import_torch() -> None:
    """Import torch and torchvision safely in a napari process (see the module docstring)."""
    if "torchvision" in sys.modules:
        return
    if "triton" not in sys.modules and _qt_running():
        # None in sys.modules: `import triton` raises ImportError and importlib's find_spec
        # reports it missing, which is how torch tells whether triton is there
        sys.modules["triton"] = None  # type: ignore[assignment]
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def _qt_running() -> bool:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() is not None
