"""Training: one LightningModule for every classifier, and the Trainer factory every command uses."""
