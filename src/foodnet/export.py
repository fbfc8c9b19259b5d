"""Export a checkpoint for deployment: `python -m foodnet.export CKPT --format onnx --out FILE`.

Writes FILE (the network followed by softmax: the output is class probabilities) and FILE.json,
the preprocessing it expects (image size, mean, std, class names) and its input/output names.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from foodnet.errors import EXIT_OK, ConfigError, run_cli
from foodnet.inference.export_format import EXPORT_FORMATS, require_image_size, sidecar_path
from foodnet.logs import console_logging
from foodnet.models.checkpoint import load_model
from foodnet.models.transfer import TransferNet

log = logging.getLogger(__name__)
INPUT_NAME = "image"
OUTPUT_NAME = "probs"
# The TorchScript-based exporter: the newer dynamo exporter needs onnxscript, which foodnet does
# not depend on. Opset 17 runs on every onnxruntime since 1.11.
ONNX_OPSET = 17
# Batch size of the example input the model is traced with; the exported batch axis is dynamic.
EXAMPLE_BATCH = 2


def probability_model(net: TransferNet) -> nn.Module:
    """The exported graph: the network followed by softmax, so outputs are probabilities."""
    return nn.Sequential(net.backbone, net.head, nn.Softmax(dim=1)).eval()


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the model to `out` and its preprocessing to the sidecar; return the sidecar path."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")
    net, info = load_model(checkpoint)
    size = require_image_size(info, checkpoint)
    model = probability_model(net)
    example = torch.zeros(EXAMPLE_BATCH, 3, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        with warnings.catch_warnings():
            # The legacy exporter announces its deprecation; it is the one that works offline.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(out), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              dynamo=False)
    else:
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated in PyTorch (ONNX is the recommended export) but works.
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(model, example).save(str(out))
    meta = {
        "format": fmt,
        **asdict(info),
        "input_name": INPUT_NAME,
        "input": f"float32 N x 3 x {size} x {size}: RGB, resized to image_size x image_size "
                 "(no crop), scaled to [0, 1], then (x - mean) / std per channel",
        "output_name": OUTPUT_NAME,
        "output": "float32 N x num_classes: softmax probabilities, index = label",
        "checkpoint": str(checkpoint),
    }
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return sidecar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foodnet.export",
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
