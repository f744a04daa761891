"""The Fine-tune widget's layout: the controls, in order, set on the widget as attributes.

Kept apart from ``finetune_widget`` (the behaviour: pickers, the run and its events), as Qt
Designer keeps a form's ``setupUi`` apart from its logic; the attributes' names are the widget's
public controls (tests and ``_settings`` read them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ._finetune_curve import LossCurve, spin_box
from ._finetune_pairs import PairRow
from ._pickers import ModelPicker

if TYPE_CHECKING:  # pragma: no cover
    from .finetune_widget import FineTuneWidget

HEADS_ONLY, EVERYTHING = "heads only (fast; CPU)", "everything (GPU)"
WHOLE_IMAGE_NOTE = (
    "Each pair's whole image counts as annotated: every unlabelled pixel is taught as "
    "background, so label every worm in it, or pick a Shapes layer as the pair's region: then "
    "only its rectangles are used."
)


def build_layout(widget: FineTuneWidget) -> None:
    """Create the widget's controls (source, pairs, folder, settings, run, status, curve)."""
    layout = QVBoxLayout(widget)
    source = QHBoxLayout()
    widget.layers_radio = QRadioButton("Layers in the viewer")
    widget.folder_radio = QRadioButton("Folder (images/ + labels/)")
    widget.layers_radio.setChecked(True)
    widget.layers_radio.toggled.connect(widget._source_changed)
    source.addWidget(widget.layers_radio)
    source.addWidget(widget.folder_radio)
    layout.addLayout(source)

    widget.pairs_box = QWidget()
    pairs = QVBoxLayout(widget.pairs_box)
    pairs.setContentsMargins(0, 0, 0, 0)
    header = QLabel("Image · Labels · Region")
    header.setToolTip(WHOLE_IMAGE_NOTE)
    pairs.addWidget(header)
    widget.rows_layout = QVBoxLayout()
    pairs.addLayout(widget.rows_layout)
    buttons = QHBoxLayout()
    widget.add_button = QPushButton("Add pair")
    widget.add_button.clicked.connect(lambda: widget.add_pair())
    widget.correct_button = QPushButton("Correct this result")
    widget.correct_button.setToolTip(
        "Copy the Segment widget's '<image> worms' layer to an editable '<image> "
        "corrections' layer and add it as a training pair"
    )
    widget.correct_button.clicked.connect(lambda: widget.correct_result())
    buttons.addWidget(widget.add_button)
    buttons.addWidget(widget.correct_button)
    pairs.addLayout(buttons)
    widget.note_label = QLabel(WHOLE_IMAGE_NOTE)
    widget.note_label.setWordWrap(True)
    pairs.addWidget(widget.note_label)
    layout.addWidget(widget.pairs_box)

    widget.folder_box = QWidget()
    folder = QHBoxLayout(widget.folder_box)
    folder.setContentsMargins(0, 0, 0, 0)
    widget.folder_edit = QLineEdit()
    widget.folder_edit.setPlaceholderText("folder with images/ and labels/ (same file names)")
    browse = QPushButton("Browse…")
    browse.clicked.connect(widget._browse_folder)
    folder.addWidget(widget.folder_edit, 1)
    folder.addWidget(browse)
    layout.addWidget(widget.folder_box)
    widget.folder_box.setVisible(False)

    form = QFormLayout()
    widget.val_row = PairRow(widget.viewer, removable=False, optional=True)
    form.addRow("Validation", widget.val_row)
    widget.models = ModelPicker(widget)
    widget.model_combo = widget.models.combo
    form.addRow("Base model", widget.models.row)
    form.addRow(widget.models.card_label)  # its card: input mode, training data, metrics
    widget.iter_spin = spin_box(1, 100_000, 200, "Training steps (the length of the schedule)")
    form.addRow("Iterations", widget.iter_spin)
    widget.minutes_spin = QDoubleSpinBox()
    widget.minutes_spin.setRange(0.0, 24 * 60)
    widget.minutes_spin.setDecimals(1)
    widget.minutes_spin.setSpecialValueText("no limit")
    widget.minutes_spin.setToolTip("Stop after this many minutes (at the next checkpoint)")
    form.addRow("Time budget (min)", widget.minutes_spin)
    widget.lr_spin = QDoubleSpinBox()
    widget.lr_spin.setDecimals(5)
    widget.lr_spin.setRange(1e-5, 0.1)
    widget.lr_spin.setSingleStep(0.0005)
    widget.lr_spin.setValue(0.0025)
    form.addRow("Learning rate", widget.lr_spin)
    widget.what_combo = QComboBox()
    widget.what_combo.addItems([HEADS_ONLY, EVERYTHING])
    widget.what_combo.setToolTip("Heads only freezes the backbone and FPN: fewer weights to fit")
    form.addRow("Train", widget.what_combo)
    widget.batch_spin = spin_box(1, 64, 2, "Crops per step")
    form.addRow("Batch size", widget.batch_spin)
    widget.crop_spin = spin_box(32, 4096, 256, "Side of the random training crops, in pixels")
    form.addRow("Crop", widget.crop_spin)
    widget.device_combo = QComboBox()
    form.addRow("Device", widget.device_combo)
    widget.name_edit = QLineEdit()
    widget.name_edit.setToolTip("Name of the new model in your model folder")
    form.addRow("Output name", widget.name_edit)
    widget.resume_check = QCheckBox("Resume (continue the model named above)")
    form.addRow(widget.resume_check)
    preview = QHBoxLayout()
    widget.preview_combo = QComboBox()
    widget.preview_combo.setToolTip("Segment this image with the latest checkpoint as it trains")
    widget.preview_spin = spin_box(0, 100_000, 25, "Preview every N steps (0: at the end only)")
    preview.addWidget(widget.preview_combo, 1)
    preview.addWidget(QLabel("every"))
    preview.addWidget(widget.preview_spin)
    form.addRow("Preview on", preview)
    layout.addLayout(form)

    run = QHBoxLayout()
    widget.train_button = QPushButton("Train")
    widget.train_button.clicked.connect(lambda: widget.train())
    widget.cancel_button = QPushButton("Cancel")
    widget.cancel_button.clicked.connect(widget.cancel)
    widget.cancel_button.setEnabled(False)
    run.addWidget(widget.train_button)
    run.addWidget(widget.cancel_button)
    layout.addLayout(run)
    widget.status_label = QLabel("")
    widget.status_label.setWordWrap(True)
    layout.addWidget(widget.status_label)
    widget.curve = LossCurve(widget)
    layout.addWidget(widget.curve)
    layout.addStretch(1)
