"""Evaluation: the paper's protocol (datasets, ELQ synthesis, methods, metrics, reports)."""
