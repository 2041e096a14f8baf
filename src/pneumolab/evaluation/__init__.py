"""Evaluation: metrics with patient-level bootstrap CIs, thresholds, calibration, plots, reports."""
