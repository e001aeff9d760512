"""Training stage: XGBoost (xgboost.dask) and a PyTorch network streaming from Parquet; prediction."""
