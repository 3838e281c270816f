"""store: the run folder under folds/<run>/ — its manifest, done-markers and predictions (runs.py)."""
