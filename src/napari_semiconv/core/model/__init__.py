"""Semi-convolutional Mask R-CNN (sec. 3.5) on torchvision: config, embedding head, RoI heads, builder."""
