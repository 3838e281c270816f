"""comp: win image-classification competitions without pretrained weights.

The Python API (the CLI `comp` is a thin shell over it):

    import comp
    ws = comp.Workspace("work", data="data/demo")           # folds/, submissions/ under "work"
    study = ws.tune(model="baseline", trials=4, epochs=3)     # -> Study (.best_config, .best_value, .trials)
    run = ws.train(study.best_config, folds="all")            # -> Run (.name, .oof_accuracy, .oof_probs, .path)
    run2 = ws.train(comp.RunConfig(model="resnet", epochs=3))
    sub = ws.ensemble([run, run2], out="demo.csv")            # -> Submission (.path, .oof_accuracy, .weights)
    ws.runs()                                                  # leaderboard as a pandas DataFrame

The pipeline is a chain of stages that talk only through files under the workdir:
data -> folds -> train -> predict (TTA) -> ensemble -> submissions/*.csv, with tune feeding
train; each stage is a module with one entry function taking typed values. Errors a user can
fix raise `comp.CompError`, whose message is the one line the CLI prints.
"""

from comp.core.version import __version__  # noqa: F401  (one place for the version)

# Public names, imported on first use so that `import comp` stays light and chooses no backend.
_PUBLIC = {
    "Workspace": "comp.workspace",
    "RunConfig": "comp.config.run_config",
    "CompError": "comp.core.errors",
    "Run": "comp.store.runs",
    "Study": "comp.stages.tune",
    "Submission": "comp.stages.ensemble",
    "set_backend": "comp.core.backend",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'comp' has no attribute {name!r}")
