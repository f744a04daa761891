"""The three tiers import one way: core knows neither Qt nor napari; the package and the
manifest targets do not import torch before a widget needs it."""

import subprocess
import sys

import pytest

GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split(".")[0] for line in out.splitlines()}


@pytest.mark.parametrize(
    "module",
    [
        "napari_semiconv.core.operators",
        "napari_semiconv.core.inference",
        "napari_semiconv.core.training",
        "napari_semiconv.core.evaluation",
        "napari_semiconv.core.export",
        "napari_semiconv.cli.main",
    ],
)
def test_core_and_cli_never_import_gui(module):
    code = f"import {module}; import napari_semiconv.cli.main as m; m.build_parser()"
    mods = _imported_after(code)
    leaked = sorted(set(GUI_MODULES) & mods)
    assert not leaked, f"{module} imports GUI modules {leaked}"


def test_package_and_plugin_targets_do_not_import_torch():
    code = (
        "import napari_semiconv\n"
        "import napari_semiconv.plugin.sample_data, napari_semiconv.plugin.reader, "
        "napari_semiconv.plugin.writer"
    )
    mods = _imported_after(code)
    assert "torch" not in mods, "importing the plugin's manifest targets must not import torch"
