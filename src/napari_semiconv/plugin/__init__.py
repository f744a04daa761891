"""napari layer: manifest targets, widgets, reader/writer, sample data. Thin: computation lives in core."""
