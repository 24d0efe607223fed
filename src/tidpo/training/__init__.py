"""Training: the configuration and its presets, precision, models, the forward pass shared by
policy and reference, the reference (live or cached), anchors, the objective, the Trainer, its
callbacks and the run folder.

Owns everything that happens in a training step and around a run (`run_training`); the one
place a run's settings are merged (`tidpo.training.settings`). May import `tidpo.functional`,
`tidpo.data` and the foundation modules (`tidpo.errors`, `tidpo.fileio`), never analysis,
studies, report or cli (a run's report reaches it through `tidpo.training.run.RunHooks`).
"""
