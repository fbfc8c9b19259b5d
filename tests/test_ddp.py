"""trainer=ddp: 2 CPU processes (gloo) train; only rank 0 writes; validation and test count every
sample of an odd-sized set exactly once, so 2 processes give exactly the 1-process accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import REPO, compose_train, subprocess_env, tiny_overrides

from foodnet.train import build


class SampleCount(L.Callback):
    """Rank 0 appends, per evaluation epoch, the number of samples all ranks evaluated."""

    def __init__(self, out: str):
        self.out, self.seen = Path(out), 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        self.seen += len(batch[1])

    on_test_batch_end = on_validation_batch_end

    def _record(self, trainer, stage):
        total = int(trainer.strategy.reduce(torch.tensor(self.seen), reduce_op="sum"))
        self.seen = 0
        if trainer.is_global_zero and not trainer.sanity_checking:
            with self.out.open("a") as file:
                file.write(json.dumps({"stage": stage, "samples": total,
                                       "world_size": trainer.world_size}) + "\n")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._record(trainer, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._record(trainer, "test")


def odd_manifest(source: Path, out: Path) -> Path:
    lines = [line.rsplit(maxsplit=1) for line in source.read_text().splitlines()]
    assert len(lines) % 2 == 0
    out.write_text("".join(f"{source.parent / path} {label}\n" for path, label in lines[:-1]))
    return out


@pytest.mark.slow
def test_ddp_two_processes_write_once_and_count_every_sample_once(tiny_data, tmp_path):
    odd = odd_manifest(tiny_data["val"], tmp_path / "val_odd.txt")
    run_dir, counts = tmp_path / "run", tmp_path / "counts.jsonl"
    overrides = tiny_overrides(tiny_data, **{
        "data.val_manifest": odd, "data.test_manifest": odd, "trainer.max_epochs": 1,
        "verbose": "true"})  # Lightning's own lines too: its distributed_backend line below
    env = subprocess_env()
    # The second process re-runs the same command: it must import this file's callback too.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", "trainer=ddp", *overrides,
         f"+callbacks.count._target_={__name__}.SampleCount", f"+callbacks.count.out={counts}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    # Two processes ran (SampleCount's records below say world_size 2); per-run lines and the
    # result come from rank 0 only.
    assert result.stdout.count("run dir:") == 1
    assert result.stdout.count('"val/acc_best"') == 1
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    # Every epoch-level value is logged as Lightning asks under DDP: none of its sync_dist hints.
    assert "sync_dist" not in result.stderr + result.stdout
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in counts.read_text().splitlines()]
    assert records == [{"stage": "val", "samples": 39, "world_size": 2},
                       {"stage": "test", "samples": 39, "world_size": 2}]

    # One process evaluates the same best checkpoint on the same 39 samples.
    cfg = compose_train(overrides, run_dir=tmp_path / "single")
    datamodule, module, trainer = build(cfg)
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=metrics["best_checkpoint"],
                          weights_only=True)
    assert tested[0]["test/acc"] == metrics["test/acc"]
    correct = tested[0]["test/acc"] * 39
    assert abs(correct - round(correct)) < 1e-4  # whole samples of 39, not of a padded 40
    validated = trainer.validate(module, datamodule=datamodule,
                                 ckpt_path=metrics["best_checkpoint"], weights_only=True)
    assert validated[0]["val/acc"] == metrics["val/acc_best"]


class BackboneDigest(L.Callback):
    """Each rank writes a digest of its backbone's parameters at the start and end of fitting."""

    def __init__(self, out: str):
        self.out = Path(out)

    def _digest(self, pl_module) -> str:
        import hashlib

        hasher = hashlib.sha256()
        for tensor in pl_module.net.backbone.parameters():
            hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return hasher.hexdigest()

    def on_train_start(self, trainer, pl_module):
        self.start = self._digest(pl_module)

    def on_train_end(self, trainer, pl_module):
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "start": self.start, "end": self._digest(pl_module)}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_gradual_under_ddp_keeps_every_process_in_sync(tiny_data, tmp_path):
    """Parts unfrozen after DDP wrapped the model are outside its gradient reducer (Lightning
    #20340): without foodnet's averaging each process would train its copy on its own shard."""
    overrides = tiny_overrides(tiny_data, **{
        "model.arch": "timm/test_efficientnet.r160_in1k", "finetune": "gradual",
        "finetune.unfreeze_last_at": 0, "finetune.unfreeze_all_at": 1, "trainer.max_epochs": 2})
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", "trainer=ddp", *overrides,
         f"+callbacks.digest._target_={__name__}.BackboneDigest",
         f"+callbacks.digest.out={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert records[0]["start"] == records[1]["start"]  # the same seeded init
    assert records[0]["end"] != records[0]["start"], "the unfrozen backbone trained"
    assert records[0]["end"] == records[1]["end"], "the processes' backbones diverged"
