"""A run folder that already holds a run is not overwritten: Hydra callback, before Hydra writes
its .hydra/ and log file there."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from foodnet.errors import EXIT_USAGE

log = logging.getLogger(__name__)

# What train and evaluate write into a run folder; a folder with any of them holds a run.
RUN_OUTPUTS = ("checkpoints", "tensorboard", "metrics.json", "report.json", "confusion.png",
               "misclassified.csv")


def previous_outputs(run_dir: Path) -> list[Path]:
    """foodnet's outputs already in run_dir (an empty checkpoints/ folder does not count)."""
    found = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(path)
    return found


class RunFolderGuard(Callback):
    """Single runs only (each multirun job has its own folder): refuse a folder holding a run
    unless the run resumes (train's ckpt_path) or overwrite=true, which clears it first."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
            return  # a DDP process that Lightning started for rank 0's run, in the same folder
        run_dir = Path(str(config.hydra.run.dir))
        found = previous_outputs(run_dir)
        if not found:
            return
        resumes = config.hydra.job.config_name == "train" and config.get("ckpt_path")
        if resumes:
            return
        if config.get("overwrite"):
            for path in found:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            log.warning("overwrite=true: removed the previous run's %s from %s",
                        ", ".join(p.name for p in found), run_dir)
            return
        fix = ("resume it with ckpt_path=last, " if config.hydra.job.config_name == "train"
               else "")
        # Written directly: foodnet's logging (job_logging) is set up only once the job starts,
        # and Hydra's own handler would put this error on stdout.
        sys.stderr.write(f"error: {run_dir} already holds a run "
                         f"({', '.join(p.name for p in found)}): {fix}set overwrite=true to "
                         "replace it, or choose another hydra.run.dir\n")
        raise SystemExit(EXIT_USAGE)


def discard_unused_run_folder() -> None:
    """A single run stopped by a user's mistake (exit 2: nothing was written) leaves no run folder
    behind when the folder holds only what Hydra wrote at the start (.hydra/ and the log); a
    folder with anything else, a resumed run's checkpoints for one, stays."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or os.environ.get("LOCAL_RANK", "0") != "0" \
            or os.environ.get("NODE_RANK", "0") != "0":
        return
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.RUN or not hydra.runtime.output_dir:
        return
    run_dir = Path(hydra.runtime.output_dir)
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(run_dir.resolve()):
        return  # hydra.run.dir=. (or a folder above): the user's own folder is never removed
    started = {f"{hydra.job.name}.log"}
    if hydra.output_subdir is not None:
        started.add(str(hydra.output_subdir))
    config_files = {"config.yaml", "hydra.yaml", "overrides.yaml"}
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - started:
        return
    subdir = run_dir / str(hydra.output_subdir)
    if subdir.is_dir() and {p.name for p in subdir.iterdir()} - config_files:
        return
    shutil.rmtree(run_dir)
    # And the folders Hydra made for it (outputs/train/) once empty, up to the working directory.
    for parent in run_dir.resolve().parents:
        if parent == cwd or not parent.is_relative_to(cwd) or any(parent.iterdir()):
            break
        parent.rmdir()
