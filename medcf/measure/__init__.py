"""Measuring images and models: the attribute predictors, the soundness metrics, the per-image truth measures
against the phantoms, the audit statistics, the classifier under audit, and the calibration's matching statistics.
Nothing here opens an output folder or an MLflow run (the jobs do)."""
