"""Prepare stage: skim Parquet -> train/val/test Parquet with weights, statistics and a global shuffle."""
