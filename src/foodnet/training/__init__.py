"""Training: the LightningModule, fine-tuning, schedules, the feature cache, resume, callbacks."""
