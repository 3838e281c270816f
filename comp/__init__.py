"""comp: win image-classification competitions without pretrained weights.

The pipeline is a chain of stages that talk only through files under the workdir:
data -> folds -> train -> predict (TTA) -> ensemble -> submissions/*.csv, with tune
feeding train. Each stage lives in its own module with one entry function; `comp.cli`
is the thin command line over them.
"""

__version__ = "0.1.0"
