"""stages: one module per pipeline stage, each an entry function taking typed values (the workdir
paths, a Dataset, a RunConfig, a Run) and writing plain files: train, tune, predict, ensemble,
submission, report, pseudo, check, transfer, auto, preview."""
