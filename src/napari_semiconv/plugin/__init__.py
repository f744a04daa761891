"""napari layer: manifest targets, widgets, reader/writer, sample data.

Thin by design: computation lives in ``napari_semiconv.core``.
"""
