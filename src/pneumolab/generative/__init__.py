"""Generative models: the study's convolutional autoencoder (and, later, its DCGAN)."""
