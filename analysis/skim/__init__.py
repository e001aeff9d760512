"""Skim stage: a coffea processor over every file of a fileset, writing skim Parquet, cutflow and manifest."""
