"""The tour notebook: committed without outputs, executed top to bottom (quick mode) by nbclient."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from helpers import REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "foodnet_tour.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "no code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


def _outputs(nb, output_type: str | None = None) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if output_type is None or out.output_type == output_type]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_and_makes_its_artefacts(tmp_path):
    data, run = tmp_path / "demo data", tmp_path / "run"  # a space in the path, on purpose
    env = dict(os.environ)
    # The kernel must import this checkout's foodnet, whatever is installed in the venv.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(FOODNET_TOUR_DATA=str(data), FOODNET_TOUR_RUN=str(run), FOODNET_TOUR_QUICK="1",
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               OMP_NUM_THREADS="1")  # tiny convolutions: intra-op threads only contend
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError, with the traceback, if any cell fails

    assert not _outputs(nb, "error")
    text = "".join(out.get("text", "") for out in _outputs(nb, "stream"))
    assert f"making the demo dataset in {data}" in text  # the data was missing, so it made it
    assert (data / "train.txt").is_file() and (data / "classes.txt").is_file()
    assert "{'train': 80, 'val': 40, 'test': 40} images, 20 classes" in text
    assert "scalars:" in text and "val/acc_best" in text and "val/confusion_matrix" in text
    assert "test images are wrong" in text

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    assert Path(metrics["best_checkpoint"]).is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # class counts, samples grid, augmentations, curves, confusion matrix, mistakes
    images = [out for out in _outputs(nb) if "image/png" in out.get("data", {})]
    assert len(images) >= 6, f"expected 6 figures, got {len(images)}"
