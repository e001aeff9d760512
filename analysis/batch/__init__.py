"""Batch submission of the skim (Slurm, HTCondor) without a dask scheduler: jobs, status, merge."""
