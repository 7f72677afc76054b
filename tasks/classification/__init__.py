"""Image classification (d2l ch. 7): Fashion-MNIST in its IDX files, read and validated."""
