"""Evaluation without training: checkpoints, prediction folders, box files, sweep comparison."""
