"""Dashboards: a finished tiny run, served by a real TensorBoard, read back over its HTTP API."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_train, tiny_overrides
from PIL import Image

from foodnet.reports.figures import confusion_matrix_figure, figure_to_array, image_grid_figure
from foodnet.train import build, train

EPOCHS = 2


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("dashboard_run")
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": EPOCHS,
                                             "model.optimizer.lr": 0.01,
                                             "model.optimizer.weight_decay": 1e-4})
    metrics = train(compose_train(overrides, run_dir=run_dir))
    return run_dir, metrics


class TensorBoard:
    """`tensorboard --port 0` on 127.0.0.1; the port it picked is read from its banner."""

    def __init__(self, logdir: Path, log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
        self.url = self._wait_for_banner(timeout=90)

    def _wait_for_banner(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", self.log.read_text())
            if found:
                return f"http://127.0.0.1:{found.group(1)}"
            if self.process.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"tensorboard did not start: {self.log.read_text()[-2000:]}")

    def get(self, path: str, **query) -> bytes:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def get_json(self, path: str, **query):
        return json.loads(self.get(path, **query))

    def post_json(self, path: str, body: dict):
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for(self, path: str, ready, timeout: float = 60):
        """Poll until the data is loaded: the server reads event files in the background."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.get_json(path)
            if ready(data) or time.monotonic() > deadline:
                return data
            time.sleep(0.5)

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # also its data-server child
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "lr-Adam",
           "speed/train_images_per_sec", "speed/epoch_seconds"}


def test_tensorboard_serves_scalars_images_and_hparams_of_a_run(finished_run, tmp_path):
    run_dir, metrics = finished_run
    server = TensorBoard(run_dir / "tensorboard", tmp_path / "tensorboard.log")
    try:
        tags = server.wait_for("/data/plugin/scalars/tags",
                               lambda d: SCALARS <= set(d.get(".", {})))["."]
        assert SCALARS <= set(tags), sorted(tags)

        def scalars(tag):
            return server.get_json("/data/plugin/scalars/scalars", run=".", tag=tag)

        val_acc = scalars("val/acc")
        assert len(val_acc) == EPOCHS
        assert scalars("val/acc_best")[-1][2] == pytest.approx(metrics["val/acc_best"])
        assert scalars("lr-Adam")[-1][2] == pytest.approx(0.01)
        assert all(value > 0 for _, _, value in scalars("speed/train_images_per_sec"))
        assert len(scalars("speed/epoch_seconds")) == EPOCHS

        images = server.get_json("/data/plugin/images/tags")["."]
        assert {"train/augmented_samples", "val/confusion_matrix"} <= set(images)
        assert images["train/augmented_samples"]["samples"] == 1
        matrices = server.get_json("/data/plugin/images/images", run=".",
                                   tag="val/confusion_matrix")
        # one per validation epoch, at the steps of the val/acc points
        assert [m["step"] for m in matrices] == [step for _, step, _ in val_acc]
        grid = server.get_json("/data/plugin/images/images", run=".",
                               tag="train/augmented_samples")
        for entry in (matrices[-1], grid[0]):
            png = server.get(f"/data/plugin/images/individualImage?{entry['query']}")
            with Image.open(io.BytesIO(png)) as image:
                assert image.format == "PNG" and min(image.size) > 100

        experiment = server.post_json("/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"lr", "weight_decay", "batch_size", "arch", "image_size", "weights", "finetune",
                "augment", "max_epochs", "optimizer", "seed"} <= names
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == ["val/acc_best"]
        groups = server.post_json("/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
            "colParams": [{"metric": {"tag": "val/acc_best", "group": ""},
                           "includeInResult": True},
                          *[{"hparam": name, "includeInResult": True}
                            for name in ("lr", "weight_decay", "batch_size", "arch",
                                         "augment")]],
        })["sessionGroups"]
        assert len(groups) == 1
        # augment: the policy's name, from the run's record (the default augment=seed)
        assert groups[0]["hparams"] == {"lr": 0.01, "weight_decay": 1e-4, "batch_size": 16,
                                        "arch": "resnet18", "augment": "seed"}
        assert groups[0]["metricValues"][0]["value"] == pytest.approx(metrics["val/acc_best"])
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_confusion_matrix_figure_names_both_axes():
    names = ["pizza", "sushi", "ramen"]
    figure = confusion_matrix_figure(np.array([[3, 1, 0], [0, 2, 2], [0, 0, 4]]), names)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert {t.get_text() for t in ax.texts} == {"3", "1", "2", "4"}  # counts, zeros left blank
    array = figure_to_array(figure)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


def test_image_grid_titles_every_image():
    images = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    figure = image_grid_figure(images, ["a", "b", "c"], columns=2)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["a", "b", "c", ""]  # a 2x2 grid, the last cell empty


def test_the_progress_bar_counts_epochs_as_the_epoch_lines_do(tiny_data, tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import RichProgressBar

    from foodnet.training.callbacks.progress import EpochProgressBar

    bars = EpochProgressBar(), RichProgressBar()
    for bar in bars:
        bar._trainer = SimpleNamespace(max_epochs=10)
    assert bars[0]._get_train_description(9).strip() == "Epoch 10/10"
    assert bars[1]._get_train_description(9).strip() == "Epoch 9/9"  # the control: Lightning's
    # The real config shows this bar; with the bar off (tiny runs), it is left out, not refused.
    shown = build(compose_train(tiny_overrides(tiny_data, **{"trainer.enable_progress_bar":
                                                             "true"}), run_dir=tmp_path))[2]
    assert isinstance(shown.progress_bar_callback, EpochProgressBar)
    hidden = build(compose_train(tiny_overrides(tiny_data), run_dir=tmp_path))[2]
    assert hidden.progress_bar_callback is None
