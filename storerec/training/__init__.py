"""Training stages: split, fit, evaluate, log to MLflow, register, tune, promote."""
