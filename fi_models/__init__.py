"""fi_models: Keras sub-networks, the fusion model and metrics (no Keras Tuner in here)."""
