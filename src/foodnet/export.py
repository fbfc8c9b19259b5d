"""Export a checkpoint for deployment: `python -m foodnet.export CKPT --format onnx --out FILE`.

Writes FILE (the network, then softmax of its logits divided by the checkpoint's temperature:
the output is calibrated class probabilities) and FILE.json,
the preprocessing it expects (the checkpoint's record: input size, resize and crop, mean, std,
interpolation), its class names, its input/output names and the checkpoint's model card.
Formats: `onnx` (PyTorch's dynamo exporter, for onnxruntime and other runtimes) and `pt2` (a
torch.export program, for PyTorch deployments).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from foodnet.errors import EXIT_OK, ConfigError, run_cli
from foodnet.logs import console_logging

# torch is imported where it is used: `--help` and an argument error answer in well under a second.
if TYPE_CHECKING:
    import torch
    from torch import nn

    from foodnet.data.preprocessing import Preprocessing
    from foodnet.models.transfer import TransferNet

EXPORT_FORMATS = ("onnx", "pt2")  # as in foodnet.inference.export_format (a test checks)

log = logging.getLogger(__name__)
INPUT_NAME = "image"
OUTPUT_NAME = "probs"
# Opset 18: the dynamo exporter's own (it converts lower ones afterwards); onnxruntime >= 1.14.
ONNX_OPSET = 18
# Batch size of the example input the model is traced with; the exported batch axis is dynamic.
EXAMPLE_BATCH = 2


def probability_model(net: TransferNet, temperature: float = 1.0) -> nn.Module:
    """The exported graph: the network, then softmax(logits / temperature): outputs are the
    calibrated probabilities that predict answers for the checkpoint."""
    from torch import nn

    class Temperature(nn.Module):  # here: torch is imported on use (see above)
        def forward(self, logits: torch.Tensor) -> torch.Tensor:
            return logits / temperature

    return nn.Sequential(net.backbone, net.head, Temperature(), nn.Softmax(dim=1)).eval()


def _batch_dim() -> torch.export.Dim:
    import torch

    return torch.export.Dim("batch", min=1)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The dynamo exporter's helpers log every optimisation pass at INFO; keep warnings only."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """The dynamo exporter (torch.export + onnxscript); the TorchScript-based one, which PyTorch
    is removing, only where dynamo fails, and said so."""
    import torch

    try:
        with _quiet("onnxscript", "onnx_ir"):
            torch.onnx.export(model, (example,), str(out), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                              dynamic_shapes=({0: _batch_dim()},), dynamo=True,
                              external_data=False, verbose=False)
        return
    except Exception as err:  # ImportError without onnxscript, or an op dynamo cannot export
        log.warning("warning: the dynamo ONNX exporter failed (%s: %s); falling back to the "
                    "TorchScript-based exporter, which PyTorch deprecates", type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation: the warning above says it already.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(out), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          dynamo=False)


def describe_resize(pre: Preprocessing) -> str:
    """The sidecar's words for the resize, for readers outside Python."""
    if pre.crop_mode == "squash":
        return f"resized to {pre.image_size} x {pre.image_size} ({pre.interpolation}, no crop)"
    return (f"shorter side resized to {pre.resize_size} ({pre.interpolation}), centre crop "
            f"{pre.image_size} x {pre.image_size}")


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the model to `out` and its preprocessing to the sidecar; return the sidecar path."""
    import torch

    from foodnet.inference.card import checkpoint_card
    from foodnet.inference.export_format import sidecar_path
    from foodnet.inference.inputs import check_output
    from foodnet.models.checkpoint import load_model, read_checkpoint

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")
    # Before loading anything: a folder or an unwritable place costs nothing.
    check_output(Path(out))
    check_output(sidecar_path(Path(out)), "--out (its sidecar)")
    net, info = load_model(checkpoint)
    pre = info.preprocessing
    size = pre.image_size
    model = probability_model(net, info.temperature)
    example = torch.zeros(EXAMPLE_BATCH, 3, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        export_onnx(model, example, out)
    else:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
        torch.export.save(program, str(out))
    meta = {
        "format": fmt,
        **info.to_dict(),
        "input_name": INPUT_NAME,
        "input": f"float32 N x 3 x {size} x {size}: RGB, {describe_resize(pre)}, scaled to "
                 "[0, 1], then (x - mean) / std per channel",
        "output_name": OUTPUT_NAME,
        "output": "float32 N x num_classes: softmax(logits / temperature) probabilities, "
                  "index = label",
        "checkpoint": str(checkpoint),
        "card": checkpoint_card(checkpoint, read_checkpoint(checkpoint)),
    }
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return sidecar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="foodnet export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a foodnet .ckpt")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="the model file to write")
    args = parser.parse_args(argv)
    console_logging()

    def body() -> int:
        sidecar = export(args.checkpoint, args.format, args.out)
        log.info("wrote %s and %s", args.out, sidecar)
        return EXIT_OK

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
