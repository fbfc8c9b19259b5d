"""Evaluate a checkpoint: `python -m foodnet.evaluate ckpt_path=CKPT data.test_manifest=M`.

Writes report.json, confusion.png and misclassified.csv into the Hydra run folder. Probabilities
are softmax(logits / T) with the checkpoint's temperature (with tta, their mean over each image's
views); calibrate=true fits T anew on data.val_manifest (on the eval preset's view alone) and also
writes calibrated.ckpt, the checkpoint with that temperature.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from foodnet.config import CONFIG_DIR
from foodnet.errors import ConfigError, ManifestError, exit_on_user_error
from foodnet.hydra_entry import run
from foodnet.reports.metrics import SCORES, TEMPERATURE, TEST_ACC, TEST_ECE, TEST_ECE_RAW
from foodnet.run_folder import discard_unused_run_folder
from foodnet.schema import EvalSchema, check_config

# torch, Lightning and torchvision are imported in evaluate(), so that `--help` and a config
# mistake answer in well under a second.

log = logging.getLogger(__name__)


def resolve_class_names(cfg: DictConfig, info) -> list[str]:
    from foodnet.data.manifest import read_classes

    if not cfg.data.get("classes"):
        return info.class_names
    names = read_classes(cfg.data.classes)
    if len(names) != info.num_classes:
        raise ManifestError(f"{cfg.data.classes} lists {len(names)} classes but the checkpoint "
                            f"has {info.num_classes}; drop data.classes to use the checkpoint's")
    return names


def evaluate(cfg: DictConfig) -> dict:
    """Run the checkpoint over data.test_manifest and write the report files; return the report."""
    cfg = check_config(cfg, EvalSchema)
    from foodnet.logs import library_chatter

    with library_chatter(cfg.verbose):
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> dict:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from foodnet.data.tta import average_probabilities, check_tta
    from foodnet.machine import resolve_device
    from foodnet.models.checkpoint import load_model
    from foodnet.reports.calibration import calibrate, expected_calibration_error
    from foodnet.reports.evaluation import write_misclassified
    from foodnet.reports.figures import confusion_matrix_figure
    from foodnet.reports.metrics import classification_report
    from foodnet.speed.plan import resolve_speed

    if not cfg.get("ckpt_path"):
        raise ConfigError("set ckpt_path=/path/to/model.ckpt (the checkpoint to evaluate)")
    if not cfg.data.get("test_manifest"):
        raise ConfigError("set data.test_manifest=/path/to/test.txt (the images to evaluate)")
    if cfg.calibrate and not cfg.data.get("val_manifest"):
        raise ConfigError("calibrate=true fits the temperature on data.val_manifest: set it "
                          "(the images the model was validated on), or calibrate=false")
    check_tta(cfg.tta)
    run_dir = Path(cfg.paths.output_dir)
    log.info("run dir: %s", run_dir)
    net, info = load_model(cfg.ckpt_path)
    class_names = resolve_class_names(cfg, info)
    # The checkpoint's own preprocessing, so the model sees what it was trained on; a value
    # given in model.preprocessing overrides it (e.g. to evaluate at another size).
    overrides = OmegaConf.to_container(cfg.model.preprocessing) if cfg.get("model") else {}
    preprocessing = info.preprocessing.override(**overrides)
    speed = resolve_speed(net.backbone, arch=net.arch, image_size=preprocessing.image_size,
                          device=resolve_device(cfg.trainer.accelerator),
                          batch_size=cfg.data.batch_size, precision=cfg.trainer.precision,
                          channels_last=cfg.channels_last)
    if speed.channels_last:
        net.to(memory_format=torch.channels_last)
    trainer: L.Trainer = instantiate(cfg.trainer, precision=speed.precision, logger=False,
                                     callbacks=[])
    temperature = info.temperature
    if cfg.calibrate:
        if str(cfg.data.val_manifest) == str(cfg.data.test_manifest):
            log.warning("warning: calibrate=true fits the temperature on the test images "
                        "themselves (data.val_manifest = data.test_manifest): test/ece is then "
                        "optimistic; give another labelled set as data.val_manifest")
        _, val_logits, val_labels = _logits(cfg, cfg.data.val_manifest, net, info,
                                            preprocessing, trainer)
        # The temperature belongs to the network, not to the views: fit it on the eval view.
        fit = calibrate(val_logits[:, 0], val_labels)
        temperature = fit.temperature
        log.info("temperature %.4f fitted on %s (checkpoint: %.4f); val ECE %.4f -> %.4f",
                 temperature, cfg.data.val_manifest, info.temperature, fit.ece_raw, fit.ece)
    samples, logits, labels = _logits(cfg, cfg.data.test_manifest, net, info, preprocessing,
                                      trainer)
    # logits: (N, views, C); one view when tta=none.
    probs = average_probabilities((logits / temperature).softmax(dim=2))
    scores, matrix = classification_report(probs, labels, class_names)
    report = {"checkpoint": str(cfg.ckpt_path), "test_manifest": str(cfg.data.test_manifest),
              "preprocessing": preprocessing.to_dict(), "tta": cfg.tta, **scores,
              TEMPERATURE: temperature,
              TEST_ECE_RAW: expected_calibration_error(average_probabilities(logits.softmax(dim=2)),
                                                       labels),
              TEST_ECE: expected_calibration_error(probs, labels)}
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.calibrate:
            report["calibrated_checkpoint"] = str(
                _save_calibrated(cfg.ckpt_path, temperature, run_dir / "calibrated.ckpt"))
        write_misclassified(run_dir / "misclassified.csv", samples, probs, class_names)
        confusion_matrix_figure(matrix, class_names, f"test ({len(samples)} images)").savefig(
            run_dir / "confusion.png", dpi=120)
        (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False)
                                             + "\n", encoding="utf-8")
        log.info("%s", "  ".join(f"{name} {report[name]:.4f}"
                                 for name in (*SCORES["test"], TEST_ECE_RAW, TEST_ECE))
                 + f"  ({report['counts']['correct']}/{report['counts']['images']} correct)")
    return report


def _logits(cfg: DictConfig, manifest: str, net, info, preprocessing, trainer):
    """The network's logits over a manifest's images, in its order: (samples, logits (N, views,
    C), labels), the views those of cfg.tta."""
    import torch
    from torch.utils.data import DataLoader

    from foodnet.data.check import check_manifest, raise_for_errors
    from foodnet.data.dataset import ManifestDataset, ignore_stop_signals
    from foodnet.data.tta import tta_transform
    from foodnet.machine import num_workers
    from foodnet.reports.evaluation import Evaluator, IndexedDataset

    # Every problem of the manifest at once, not only the first.
    report = check_manifest(manifest, info.num_classes, decode=False,
                            label_fix=f"the checkpoint knows {info.num_classes} classes: fix the "
                                      "label, or evaluate a checkpoint trained on this label")
    raise_for_errors([report])
    samples = report.samples
    dataset = ManifestDataset(samples, tta_transform(preprocessing, cfg.tta))
    loader = DataLoader(IndexedDataset(dataset), batch_size=cfg.data.batch_size,
                        num_workers=num_workers(cfg.data.num_workers),
                        pin_memory=torch.cuda.is_available(),
                        worker_init_fn=ignore_stop_signals)
    evaluator = Evaluator(net)
    trainer.test(evaluator, dataloaders=loader, verbose=False)
    if len(evaluator.labels) != len(samples):
        raise ConfigError(f"evaluated {len(evaluator.labels)} of {len(samples)} images: drop "
                          "trainer.limit_test_batches / fast_dev_run, the report covers all")
    return samples, evaluator.logits, evaluator.labels


def _save_calibrated(checkpoint: str, temperature: float, out: Path) -> Path:
    """A copy of the checkpoint whose temperature is the one fitted here (the original stays)."""
    import torch

    from foodnet.models.checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint)
    state["hyper_parameters"][TEMPERATURE] = temperature
    torch.save(state, out)
    log.info("wrote %s (the checkpoint with temperature %.4f)", out, temperature)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error(cleanup=discard_unused_run_folder):
        report = evaluate(cfg)
    return report[TEST_ACC]


if __name__ == "__main__":
    run(main)
