"""One vocabulary for metrics: the name Lightning logs (TensorBoard's tag) is also the key in
metrics.json, report.json, MLflow and the sweep summary, e.g. `val/acc_best`, `test/acc_top5`."""

from __future__ import annotations

from typing import TYPE_CHECKING

# The names below are read by every command, also by `--help`: torch comes only with the
# functions that compute.
if TYPE_CHECKING:
    import torch

TOP_K = 5  # the k of */acc_top5 (clamped to the number of classes)

ACC = "acc"
ACC_TOP5 = "acc_top5"
F1_MACRO = "f1_macro"
LOSS = "loss"
PER_CLASS_ACC = "per_class_acc"
VAL_ACC = "val/acc"
VAL_ACC_BEST = "val/acc_best"  # the best val/acc so far: what checkpoints and sweeps rank by
TEST_ACC = "test/acc"


def metric(split: str, name: str) -> str:
    """`split/name`, e.g. metric("test", ACC_TOP5) == "test/acc_top5"."""
    return f"{split}/{name}"


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, true class down, predicted class across."""
    import torch

    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    matrix.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    return matrix


def per_class_accuracy(confusion: torch.Tensor, class_names: list[str]) -> dict[str, float | None]:
    """Recall per class name from a confusion matrix (true down); None for a class with no image."""
    support = confusion.sum(dim=1)
    return {name: (int(confusion[i, i]) / int(support[i]) if support[i] > 0 else None)
            for i, name in enumerate(class_names)}


def classification_report(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                          split: str = "test") -> dict:
    """Accuracy, top-k, macro F1, per-class accuracy and counts, under this module's names."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    num_classes = len(class_names)
    preds = probs.argmax(dim=1)
    images = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[preds == labels], minlength=num_classes)
    confusion = confusion_matrix(labels, preds, num_classes)
    return {
        metric(split, ACC): float(multiclass_accuracy(probs, labels, num_classes,
                                                      average="micro")),
        metric(split, ACC_TOP5): float(multiclass_accuracy(
            probs, labels, num_classes, average="micro", top_k=min(TOP_K, num_classes))),
        # Classes absent from both labels and predictions are left out of the mean (torchmetrics).
        metric(split, F1_MACRO): float(multiclass_f1_score(probs, labels, num_classes,
                                                           average="macro")),
        metric(split, PER_CLASS_ACC): per_class_accuracy(confusion, class_names),
        "counts": {
            "images": len(labels),
            "correct": int((preds == labels).sum()),
            "per_class": {name: {"images": int(n), "correct": int(c)}
                          for name, n, c in zip(class_names, images, correct, strict=True)},
        },
    }
