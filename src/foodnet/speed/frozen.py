"""What runs a frozen backbone with a SpeedPlan: without autograd, in its memory layout, in passes
of `backbone_batch` images, through the compiled forward when the plan says so."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from foodnet.speed.compile import CompiledForward, CompileMeasurement
from foodnet.speed.plan import SpeedPlan


class FrozenBackbone:
    """Features of a frozen backbone, computed the way the plan decided. A plain object, not a
    submodule, so the network's state_dict stays what it was.

    Splitting a batch into passes changes no value: a frozen backbone runs in eval mode, where
    every image is computed on its own. Passes keep its activations small (memory) and, on a
    CPU, in cache (speed.decide.choose_backbone_batch)."""

    def __init__(self, backbone: nn.Module, plan: SpeedPlan | None = None,
                 name: str = "backbone"):
        self.backbone = backbone
        self.plan = plan or SpeedPlan()
        self.forward = backbone
        if self.plan.compiled:
            self.forward = CompiledForward(backbone, name=name, batch_size=self.plan.compile_batch,
                                           on_measured=self._record)

    def _record(self, measurement: CompileMeasurement) -> None:
        if self.plan.compile_record is not None:
            self.plan.compile_record.put({"measurement": asdict(measurement)})

    # no_grad rather than inference_mode: feature extraction (training/features.py) runs under
    # no_grad too, so that a compiled forward serves both without compiling twice.
    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        size = self.plan.backbone_batch
        if size is None or x.shape[0] <= size:
            return self.forward(x)
        return torch.cat([self.forward(chunk) for chunk in x.split(size)])
