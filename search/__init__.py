"""search: HyperModel, tuner set-up, retraining, scoring, reports and prediction."""
