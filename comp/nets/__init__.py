"""nets: the model registry (models.py: every net built by name from a config) and comp's own Keras
layers (layers.py, lookahead.py). models.py imports keras only inside its builders."""
