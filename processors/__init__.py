"""hepprep processors: coffea processors and the pure awkward functions they call."""

__all__: list[str] = []
