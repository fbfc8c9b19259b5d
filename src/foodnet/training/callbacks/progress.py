"""The progress bar, counting epochs from 1 as foodnet's epoch lines do."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class EpochProgressBar(RichProgressBar):
    """Lightning's rich bar, but "Epoch 10/10" on the last of 10 epochs, not "Epoch 9/9"."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            description += f"/{self.trainer.max_epochs}"
        # Padded like Lightning's, so the bar does not flicker between training and validation.
        return f"{description:{len(self.validation_description)}}"
