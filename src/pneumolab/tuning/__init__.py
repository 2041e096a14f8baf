"""Hyper-parameter tuning with Optuna: every trial is an ordinary ``train`` run, selected on validation."""
