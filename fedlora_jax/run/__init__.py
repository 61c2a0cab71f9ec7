"""Run orchestration: setup from a config, the training loop, checkpoints, reports."""
