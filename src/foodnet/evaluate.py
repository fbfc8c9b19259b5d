"""Evaluate a checkpoint: `python -m foodnet.evaluate ckpt_path=CKPT data.test_manifest=M`.

Writes report.json, confusion.png and misclassified.csv into the Hydra run folder.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from foodnet.checkpoint import CheckpointError, ModelInfo, load_model
from foodnet.data import ManifestDataset
from foodnet.data.datamodule import auto_num_workers
from foodnet.images import ImageLoadError
from foodnet.manifest import ManifestError, Sample, read_classes, read_manifest
from foodnet.model import TransferNet
from foodnet.transforms import eval_transform

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
USER_ERRORS = (ManifestError, CheckpointError, ImageLoadError, ValueError, FileNotFoundError)
TOP_K = 5


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
    """Runs the network over the test loader and keeps every sample's probabilities and label."""

    def __init__(self, net: TransferNet):
        super().__init__()
        self.net = net
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self.probs: torch.Tensor | None = None   # (N, C) in manifest order, after the test run
        self.labels: torch.Tensor | None = None  # (N,)

    def test_step(self, batch, batch_idx):
        x, y, index = batch
        self._batches.append((index, y, self.net(x).softmax(dim=1)))

    def on_test_epoch_end(self):
        index, labels, probs = (torch.cat(parts) for parts in zip(*self._batches, strict=True))
        self._batches.clear()
        if self.trainer.world_size > 1:
            # Each rank saw a strided share, padded to equal length with repeated samples:
            # gather all shares, then writing by index drops the repeats.
            index, labels, probs = (self.all_gather(t).flatten(0, 1)
                                    for t in (index, labels, probs))
        count = int(index.max()) + 1
        self.probs = probs.new_empty(count, probs.shape[1])
        self.labels = labels.new_empty(count)
        self.probs[index], self.labels[index] = probs, labels
        self.probs, self.labels = self.probs.cpu(), self.labels.cpu()


def build_report(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """test_acc, top-k, macro F1, per-class accuracy and counts, computed with torchmetrics."""
    num_classes = len(class_names)
    preds = probs.argmax(dim=1)
    per_class = multiclass_accuracy(probs, labels, num_classes, average="none")
    images = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[preds == labels], minlength=num_classes)
    return {
        "test_acc": float(multiclass_accuracy(probs, labels, num_classes, average="micro")),
        "top5_acc": float(  # top-k with k = min(5, classes)
multiclass_accuracy(probs, labels, num_classes, average="micro",
                                      top_k=min(TOP_K, num_classes))),
        # Classes absent from both labels and predictions are left out of the mean (torchmetrics).
        "macro_f1": float(multiclass_f1_score(probs, labels, num_classes, average="macro")),
        "per_class_acc": {name: (float(acc) if n else None)
                          for name, acc, n in zip(class_names, per_class, images, strict=True)},
        "counts": {
            "images": len(labels),
            "correct": int((preds == labels).sum()),
            "per_class": {name: {"images": int(n), "correct": int(c)}
                          for name, n, c in zip(class_names, images, correct, strict=True)},
        },
    }


def write_misclassified(path: Path, samples: list[Sample], probs: torch.Tensor,
                        class_names: list[str]) -> None:
    """One row per wrong prediction, in manifest order."""
    confidence, preds = probs.max(dim=1)
    rows = [(str(s.path), class_names[s.label], class_names[p], f"{c:.6f}")
            for s, p, c in zip(samples, preds.tolist(), confidence.tolist(), strict=True)
            if p != s.label]
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(("path", "true", "predicted", "confidence"))
        writer.writerows(rows)


def plot_confusion(matrix: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Counts, true class down, predicted class across; scales to ~100 classes."""
    n = len(class_names)
    side = max(6.0, 0.3 * n + 2)
    font = 8 if n <= 30 else 5
    figure = Figure(figsize=(side, side), layout="constrained")  # no pyplot: no GUI backend
    axes = figure.add_subplot()
    image = axes.imshow(matrix.numpy(), cmap="Blues")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.6, label="images")
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    axes.set_yticks(range(n), class_names, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if n <= 30:
        top = float(matrix.max()) or 1.0
        for (row, col), value in zip(matrix.nonzero().tolist(), matrix[matrix > 0].tolist(),
                                     strict=True):
            axes.text(col, row, str(value), ha="center", va="center", fontsize=font,
                      color="white" if value > top / 2 else "black")
    figure.savefig(path, dpi=120)


def resolve_class_names(cfg: DictConfig, info: ModelInfo) -> list[str]:
    if not cfg.data.get("classes"):
        return info.class_names
    names = read_classes(cfg.data.classes)
    if len(names) != info.num_classes:
        raise ManifestError(f"{cfg.data.classes} lists {len(names)} classes but the checkpoint "
                            f"has {info.num_classes}; drop data.classes to use the checkpoint's")
    return names


def evaluate(cfg: DictConfig) -> dict:
    """Run the checkpoint over data.test_manifest and write the report files; return the report."""
    if not cfg.get("ckpt_path"):
        raise ValueError("set ckpt_path=/path/to/model.ckpt (the checkpoint to evaluate)")
    if not cfg.data.get("test_manifest"):
        raise ValueError("set data.test_manifest=/path/to/test.txt (the images to evaluate)")
    run_dir = Path(cfg.paths.output_dir)
    print(f"run dir: {run_dir}", flush=True)
    net, info = load_model(cfg.ckpt_path)
    class_names = resolve_class_names(cfg, info)
    image_size = cfg.data.image_size or info.image_size
    if not image_size:
        raise ValueError(f"{cfg.ckpt_path} records no image_size: set data.image_size")
    samples = read_manifest(cfg.data.test_manifest, num_classes=info.num_classes)
    # The checkpoint's own normalisation, so the model sees what it was trained on.
    dataset = ManifestDataset(samples, eval_transform(image_size, info.mean, info.std))
    workers = cfg.data.num_workers
    workers = auto_num_workers() if workers == "auto" else int(workers)
    loader = DataLoader(IndexedDataset(dataset), batch_size=cfg.data.batch_size,
                        num_workers=workers, pin_memory=torch.cuda.is_available())

    evaluator = Evaluator(net)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    trainer.test(evaluator, dataloaders=loader, verbose=False)
    if len(evaluator.labels) != len(samples):
        raise ValueError(f"evaluated {len(evaluator.labels)} of {len(samples)} images: drop "
                         "trainer.limit_test_batches / fast_dev_run, the report covers all")
    report = {"checkpoint": str(cfg.ckpt_path), "test_manifest": str(cfg.data.test_manifest),
              "image_size": int(image_size),
              **build_report(evaluator.probs, evaluator.labels, class_names)}
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_misclassified(run_dir / "misclassified.csv", samples, evaluator.probs, class_names)
        matrix = multiclass_confusion_matrix(evaluator.probs, evaluator.labels, info.num_classes)
        plot_confusion(matrix, class_names, run_dir / "confusion.png")
        (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False)
                                             + "\n", encoding="utf-8")
        print(f"test_acc {report['test_acc']:.4f}  top5_acc {report['top5_acc']:.4f}  "
              f"macro_f1 {report['macro_f1']:.4f}  ({report['counts']['correct']}/"
              f"{report['counts']['images']} correct)", flush=True)
    return report


def user_message(err: Exception) -> str:
    text = str(err).strip()
    # A DataLoader worker re-raises with its traceback in the message: its last line is the error.
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float:
    try:
        report = evaluate(cfg)
    except USER_ERRORS as err:
        print(f"error: {user_message(err)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return report["test_acc"]


if __name__ == "__main__":
    main()
