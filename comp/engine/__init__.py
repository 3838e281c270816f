"""engine: training and inference on Keras (the layer that imports keras at module top): the fold
driver (trainer.py) and its parts, one job a module (step, feed, optimizers, batchnorm, checkpoints,
callbacks, programs, plots), in-graph augmentation (augment.py), compiled multi-view prediction
(inference.py, tta.py)."""
