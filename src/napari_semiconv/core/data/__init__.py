"""Data readers and the training dataset: BBBC010, folders of images + labels, in-memory arrays."""
