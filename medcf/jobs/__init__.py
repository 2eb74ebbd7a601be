"""The jobs the bundles run (prepare, inference, calibrate, evaluate, audit, study) and their glue (bundle
helpers, model loading, phantom sets, reports, the ``medcf`` command). The only layer that opens output folders
and MLflow runs; no job module imports another."""
