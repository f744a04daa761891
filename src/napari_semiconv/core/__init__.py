"""Core tier: numpy/torch only. Never imports Qt, napari or magicgui."""
