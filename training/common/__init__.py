"""Pieces shared by the training pipelines (run set-up: distributed, precision, schedule, checkpoints)."""
