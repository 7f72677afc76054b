"""The generative pipeline: a VAE and a DCGAN on Fashion-MNIST, evaluated on the classifier's features."""
