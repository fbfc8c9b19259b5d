"""Evaluate a network over a labelled dataset: every sample's logits, in manifest order (also
under DDP), for the report, the calibration, the confusion matrix and the list of mistakes
(costliest first)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

from foodnet.data.dataset import ManifestDataset
from foodnet.data.manifest import Sample
from foodnet.models.transfer import TransferNet


class IndexedDataset(Dataset):
    """(image, label, index): the index ties each output back to its manifest sample."""

    def __init__(self, dataset: ManifestDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class Evaluator(L.LightningModule):
    """Runs the network over the test loader and keeps every sample's logits and label; images
    given as views (N x views x C x H x W, foodnet.data.tta) keep each view's logits."""

    def __init__(self, net: TransferNet):
        super().__init__()
        self.net = net
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self.logits: torch.Tensor | None = None  # (N, C), or (N, views, C): in manifest order
        self.labels: torch.Tensor | None = None  # (N,)

    def test_step(self, batch, batch_idx):
        x, y, index = batch
        if x.dim() == 5:
            logits = self.net(x.flatten(0, 1)).float().view(*x.shape[:2], -1)
        else:
            logits = self.net(x).float()
        self._batches.append((index, y, logits))

    def on_test_epoch_end(self):
        index, labels, logits = (torch.cat(parts) for parts in zip(*self._batches, strict=True))
        self._batches.clear()
        if self.trainer.world_size > 1:
            # Each rank saw a strided share, padded to equal length with repeated samples:
            # gather all shares, then writing by index drops the repeats.
            index, labels, logits = (self.all_gather(t).flatten(0, 1)
                                     for t in (index, labels, logits))
        count = int(index.max()) + 1
        self.logits = logits.new_empty(count, *logits.shape[1:])
        self.labels = labels.new_empty(count)
        self.logits[index], self.labels[index] = logits, labels
        self.logits, self.labels = self.logits.cpu(), self.labels.cpu()


def write_misclassified(path: Path, samples: list[Sample], probs: torch.Tensor,
                        class_names: list[str]) -> None:
    """One row per wrong prediction, the most confident mistakes (highest loss) first, each
    image's path resolved (a manifest's `../photos/x.jpg` as the file it names)."""
    confidence, preds = probs.max(dim=1)
    labels = torch.tensor([s.label for s in samples])
    # The cross-entropy of the true class: what the network's mistake cost.
    loss = -probs[torch.arange(len(samples)), labels].clamp_min(1e-12).log()
    rows = [(float(loss[i]), str(Path(s.path).resolve()), class_names[s.label],
             class_names[p], f"{c:.6f}")
            for i, (s, p, c) in enumerate(zip(samples, preds.tolist(), confidence.tolist(),
                                              strict=True))
            if p != s.label]
    rows.sort(key=lambda row: -row[0])
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(("path", "true", "predicted", "confidence", "loss"))
        writer.writerows((*row[1:], f"{row[0]:.6f}") for row in rows)
