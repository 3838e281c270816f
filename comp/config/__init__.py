"""config: the run config and its defaults, presets and recipes (run_config.py), and the vocabularies
of augmentation (augment_presets.py) and test-time augmentation (tta_policy.py)."""
