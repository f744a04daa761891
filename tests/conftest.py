"""Test configuration.

torch must be imported before any Qt binding (a known crash otherwise), so it is imported here,
before pytest-qt / napari create a QApplication.
"""

import os
from pathlib import Path

import torch  # noqa: F401  (import order matters: before Qt)
import torchvision  # noqa: F401  (so is torchvision: a test file run alone imports it late)

torch.set_num_threads(min(2, os.cpu_count() or 1))

import pytest  # noqa: E402

BBBC010 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bbbc010" / "train"


@pytest.fixture(scope="session")
def bbbc010_root() -> Path:
    """The real BBBC010 training wells beside the checkout; tests that need them skip without."""
    root = Path(os.environ.get("SEMICONV_BBBC010", BBBC010))
    if not (root / "images").is_dir() or not (root / "eachworm").is_dir():
        pytest.skip(f"BBBC010 training wells not found at {root} (set SEMICONV_BBBC010)")
    return root


@pytest.fixture(autouse=True)
def _own_config_dir(tmp_path_factory, monkeypatch):
    """Each test remembers widget settings in a folder of its own: never the user's, and never
    what an earlier test's widget left behind."""
    monkeypatch.setenv("SEMICONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
