"""Evaluation stage: metrics, plots and a self-contained report for trained models."""
