"""Inference: a Predictor shared by the CLI and the service (imports nothing from training)."""
