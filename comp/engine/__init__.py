"""engine: training and inference on Keras (the layer that imports keras at module top): the fold
trainer (trainer.py), in-graph augmentation (augment.py), compiled multi-view prediction
(inference.py, tta.py)."""
