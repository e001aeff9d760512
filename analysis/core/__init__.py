"""Core (all stages): what the stages share — file writing, names, URLs — and nothing stage-specific."""
