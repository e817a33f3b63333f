"""The fine-tune: the distillation LightningModule and DataModule, next-token training, checkpoints (adapters, merged models) and the run's logger."""
