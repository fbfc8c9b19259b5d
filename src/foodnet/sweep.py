"""Summarise a Hydra multirun: summary.csv and summary.md in the sweep dir, the best job printed.

Registered under hydra.callbacks (conf/hydra/default.yaml). It reads what every job left on disk
(.hydra/overrides.yaml and metrics.json), so it works the same for the basic launcher, Optuna and
SLURM jobs that ran on other machines.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from foodnet.logs import console_logging
from foodnet.reports.metrics import TEST_ACC, VAL_ACC_BEST

COLUMNS = ("job", "status", VAL_ACC_BEST, TEST_ACC, "overrides", "run_dir", "error")
# A job that ended as it should; any other status makes the sweep exit with 1. (An interrupted
# Optuna trial was queued again and ran as a later trial, see docs/search.md.)
ENDED = ("completed", "pruned", "interrupted")

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    job: int
    status: str  # completed | pruned (an Optuna trial stopped early) | interrupted (an Optuna
    # trial queued again) | failed | unfinished (no metrics.json: still running, killed, crashed)
    best_val_acc: float | None
    test_acc: float | None
    overrides: list[str]
    run_dir: Path
    error: str = ""
    epochs: int | None = None  # epochs trained, and of how many (a pruned trial stops early)
    max_epochs: int | None = None


def _job_number(job_dir: Path, fallback: int) -> int:
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num")
        if isinstance(num, int):
            return num
    return fallback


def read_job(job_dir: Path, fallback_num: int = -1) -> JobResult:
    """One job's result from its folder."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    result = JobResult(job=_job_number(job_dir, fallback_num), status="unfinished",
                       best_val_acc=None, test_acc=None, overrides=overrides, run_dir=job_dir,
                       error="no metrics.json: the job is still running, was killed or crashed")
    metrics_file = job_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics: dict[str, Any] = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            result.status, result.error = "failed", f"{metrics_file}: unreadable ({err})"
            return result
        result.status = metrics.get("status", "completed")
        result.best_val_acc = metrics.get(VAL_ACC_BEST)
        result.test_acc = metrics.get(TEST_ACC)
        result.error = metrics.get("error") or ""
        result.epochs, result.max_epochs = metrics.get("epochs"), metrics.get("max_epochs")
    return result


def collect(sweep_dir: Path) -> list[JobResult]:
    """Every job under the sweep dir (any hydra.sweep.subdir layout), in job order."""
    job_dirs = sorted(p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml"))
    jobs = [read_job(job_dir, index) for index, job_dir in enumerate(job_dirs)]
    return sorted(jobs, key=lambda job: job.job)


def best_job(jobs: list[JobResult]) -> JobResult | None:
    scored = [j for j in jobs if j.status == "completed" and j.best_val_acc is not None
              and not math.isnan(j.best_val_acc)]
    return max(scored, key=lambda j: j.best_val_acc, default=None)


def _varying(jobs: list[JobResult]) -> tuple[list[str], list[str]]:
    """Split override keys into those that differ between jobs (the swept ones) and the rest."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    varying = [k for k, v in values.items()
               if len(v) > 1 or any(k not in _keys(j) for j in jobs)]
    common = sorted({o for j in jobs for o in j.overrides if o.partition("=")[0] not in varying})
    return varying, common


def _keys(job: JobResult) -> set[str]:
    return {o.partition("=")[0] for o in job.overrides}


def _swept(job: JobResult, varying: list[str]) -> str:
    """The job's overrides of the swept keys (all of them when nothing varies), for reading."""
    chosen = [o for o in job.overrides if o.partition("=")[0] in varying]
    return " ".join(_readable(o) for o in chosen or job.overrides)


def _short(value: str) -> str:
    """A float as 4 significant digits (Optuna's lr=0.015238363140598041 as 0.01524); other
    values as given. summary.csv and each job's .hydra/overrides.yaml keep the exact value."""
    try:
        number = float(value)
    except ValueError:
        return value
    if "." not in value and "e" not in value.lower():
        return value  # an integer, or inf/nan
    short = f"{number:.4g}"
    return short if len(short) < len(value) else value  # 1e-3 stays as the user wrote it


def _readable(override: str) -> str:
    key, sep, value = override.partition("=")
    return f"{key}{sep}{_short(value)}"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_csv(jobs: list[JobResult], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for j in jobs:
            writer.writerow([j.job, j.status, _fmt(j.best_val_acc), _fmt(j.test_acc),
                             " ".join(j.overrides), str(j.run_dir), j.error])


def _status(job: JobResult) -> str:
    if job.status == "pruned" and job.epochs is not None:
        return f"pruned after epoch {job.epochs} of {job.max_epochs}"
    return job.status


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(jobs: list[JobResult]) -> list[str]:
    """The jobs side by side: status, accuracies and the swept overrides, as markdown rows."""
    varying, _ = _varying(jobs)
    best = best_job(jobs)
    lines = ["| " + " | ".join(["job", "status", VAL_ACC_BEST, TEST_ACC, *varying,
                                "run dir"]) + " |",
             "|" + " --- |" * (5 + len(varying))]
    for j in jobs:
        chosen = dict(o.partition("=")[::2] for o in j.overrides)
        row = [str(j.job), _status(j) + (" (best)" if j is best else ""), _fmt(j.best_val_acc),
               _fmt(j.test_acc), *[_short(chosen.get(k, "")) for k in varying], f"`{j.run_dir}`"]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def render_markdown(jobs: list[JobResult], sweep_dir: Path) -> str:
    varying, common = _varying(jobs)
    best = best_job(jobs)
    failed = [j for j in jobs if j.status not in ENDED]
    ended = [f"{n} {status}" for status in ENDED[1:]
             if (n := sum(j.status == status for j in jobs))]
    lines = [f"# Sweep summary: {sweep_dir}", ""]
    lines.append(f"{len(jobs)} jobs: {sum(j.status == 'completed' for j in jobs)} completed, "
                 + "".join(f"{part}, " for part in ended)
                 + f"{len(failed)} failed or unfinished.")
    if best is not None:
        lines.append(f"**Best: job {best.job}**, {VAL_ACC_BEST} {best.best_val_acc:.4f}, "
                     f"`{_swept(best, varying)}`, run dir `{best.run_dir}`.")
    if common:
        lines.append(f"Common overrides: `{' '.join(common)}`.")
    lines += ["", *render_table(jobs)]
    if failed:
        lines += ["", "## Failed or unfinished jobs", ""]
        lines += [f"- job {j.job} ({j.status}, `{j.run_dir}`): {_cell(j.error)}" for j in failed]
    return "\n".join(lines) + "\n"


def summarize(sweep_dir: str | Path) -> list[JobResult]:
    """Write summary.csv and summary.md into the sweep dir, print the best job; return the jobs."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    write_csv(jobs, sweep_dir / "summary.csv")
    (sweep_dir / "summary.md").write_text(render_markdown(jobs, sweep_dir), encoding="utf-8")
    best = best_job(jobs)
    failed = [j for j in jobs if j.status not in ENDED]
    log.info("sweep summary: %s (%d jobs, %d failed or unfinished)\n%s", sweep_dir / "summary.md",
             len(jobs), len(failed), "\n".join(render_table(jobs)))
    for j in failed:
        log.warning("  job %s %s: %s", j.job, j.status, j.error)
    if best is None:
        log.info("best job: none completed")
    else:
        log.info("best job %s: %s %.4f  %s  (%s)", best.job, VAL_ACC_BEST, best.best_val_acc,
                 _swept(best, _varying(jobs)[0]), best.run_dir)
    return jobs


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep when it ends; exit 1 when any job failed or did not
    finish (a pruned Optuna trial ended as it should)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolved now: ${now:...} is cached from here on, so the end sees the same folder.
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = getattr(self, "sweep_dir", None) or Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("sweep summary: %s does not exist, no job ran", sweep_dir)
            return
        jobs = summarize(sweep_dir)
        if any(j.status not in ENDED for j in jobs):
            # The summary is written; the exit status still tells scripts that something failed.
            raise SystemExit(1)


def is_sweep_dir(path: Path) -> bool:
    """A multirun folder: job folders below it, and not itself a job's folder."""
    return not (path / ".hydra").is_dir() and any(path.glob("*/**/.hydra/overrides.yaml"))


def main(argv: list[str] | None = None) -> int:
    """Re-summarise a sweep, e.g. one whose SLURM jobs are still running."""
    import argparse

    from foodnet.errors import EXIT_OK, EXIT_PARTIAL, InputError, run_cli

    parser = argparse.ArgumentParser(
        prog="foodnet sweep",
        description="Write summary.csv and summary.md of a Hydra multirun folder and print the "
                    "best job.",
        epilog="exit status: 0 every job completed, 1 some job failed or is unfinished, "
               "2 not a sweep folder or bad arguments (docs/errors.md)")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR",
                        help="a multirun/... folder (one job folder per run below it)")
    args = parser.parse_args(argv)
    console_logging()

    def body() -> int:
        if not args.sweep_dir.is_dir():
            raise InputError(f"{args.sweep_dir}: no such folder")
        if not is_sweep_dir(args.sweep_dir):
            raise InputError(f"{args.sweep_dir}: not a sweep folder (no job folders with "
                             ".hydra/overrides.yaml below it, or it is a single run's folder); "
                             "give the multirun/... folder")
        jobs = summarize(args.sweep_dir)
        return EXIT_PARTIAL if any(j.status != "completed" for j in jobs) else EXIT_OK

    return run_cli(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
