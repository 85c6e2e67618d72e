"""Training data preparation: near-duplicate removal, caption explosion, splits, tables."""
