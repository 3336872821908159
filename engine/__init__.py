"""Training engine: configuration, optimisation, inference, per-job training and result files."""
