"""Semi-convolutional Mask R-CNN (sec. 3.5) on torchvision.

Modules: config, embedding head, RoI heads, builder.
"""
