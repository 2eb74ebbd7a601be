"""Guidance calibrated from data: the plan file (:mod:`medcf.calibration.plan`, read by every job that decodes),
the matching statistics (:mod:`medcf.calibration.matching`) and the calibrate job (:mod:`medcf.calibration.job`).

This package's ``__init__`` imports nothing, so that loading a plan does not pull in the predictors and
phantoms the calibrate job uses."""
