"""Metrics: per image first (one CSV per shard), aggregated in ctrlbench.report."""
