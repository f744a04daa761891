"""Command line: a thin layer over napari_semiconv.core."""
