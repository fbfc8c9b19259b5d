"""One vocabulary and one implementation for metrics.

The names are what Lightning logs (TensorBoard's tag) and the keys of metrics.json, report.json,
MLflow and the sweep summary. The values come from torchmetrics, through the same collection in
training (FoodClassifier) and in evaluate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The names below are read by every command, also by `--help`: torch comes only with the
# functions that compute.
if TYPE_CHECKING:
    import torch
    from torchmetrics import MetricCollection

TOP_K = 5  # the k of */acc_top5 (clamped to the number of classes)

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_ACC_TOP5 = "val/acc_top5"
VAL_F1_MACRO = "val/f1_macro"
VAL_ACC_BEST = "val/acc_best"  # the best val/acc so far: what checkpoints and sweeps rank by
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_ACC_TOP5 = "test/acc_top5"
TEST_F1_MACRO = "test/f1_macro"
TEST_PER_CLASS_ACC = "test/per_class_acc"
# Expected calibration error (reports/calibration.py) of softmax(logits), and after the fitted
# temperature: softmax(logits / T), what predict, serve and exports answer.
VAL_ECE_RAW = "val/ece_raw"
VAL_ECE = "val/ece"
TEST_ECE_RAW = "test/ece_raw"
TEST_ECE = "test/ece"
TEMPERATURE = "temperature"  # the fitted T, in metrics.json, report.json and the checkpoint

# The scores of a split that classification_metrics computes: accuracy, top-k accuracy, macro F1.
SCORES = {"val": (VAL_ACC, VAL_ACC_TOP5, VAL_F1_MACRO),
          "test": (TEST_ACC, TEST_ACC_TOP5, TEST_F1_MACRO)}


def classification_metrics(num_classes: int, split: str) -> MetricCollection:
    """The split's scores (SCORES[split]) as torchmetrics, keyed by their logged names."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    acc, acc_top5, f1_macro = SCORES[split]
    return MetricCollection({
        acc: MulticlassAccuracy(num_classes, average="micro"),
        acc_top5: MulticlassAccuracy(num_classes, top_k=min(TOP_K, num_classes),
                                     average="micro"),
        # Classes absent from both targets and predictions are left out of the mean.
        f1_macro: MulticlassF1Score(num_classes, average="macro"),
    }, compute_groups=False)  # Lightning logs each member on its own: no shared states


def per_class_accuracy(confusion: torch.Tensor, class_names: list[str]) -> dict[str, float | None]:
    """Recall per class name from a confusion matrix (true down); None for a class with no image."""
    support = confusion.sum(dim=1)
    return {name: (int(confusion[i, i]) / int(support[i]) if support[i] > 0 else None)
            for i, name in enumerate(class_names)}


def classification_report(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]
                          ) -> tuple[dict, torch.Tensor]:
    """The test scores, per-class accuracy and counts under this module's names, and the
    confusion matrix they come from (true class down, predicted class across)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    num_classes = len(class_names)
    scores = classification_metrics(num_classes, "test")
    scores.update(probs, labels)
    confusion = MulticlassConfusionMatrix(num_classes)(probs, labels).cpu()
    report = {
        **{name: float(value) for name, value in scores.compute().items()},
        TEST_PER_CLASS_ACC: per_class_accuracy(confusion, class_names),
        "counts": {
            "images": int(confusion.sum()),
            "correct": int(confusion.trace()),
            "per_class": {name: {"images": int(confusion[i].sum()), "correct": int(confusion[i, i])}
                          for i, name in enumerate(class_names)},
        },
    }
    return report, confusion
