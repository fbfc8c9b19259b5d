"""foodnet serve under load: dynamic batching against batch size 1, side by side in one run.

    python benchmarks/bench_serve.py    # = make bench-serve: 32 clients x 500 requests per server
    python benchmarks/bench_serve.py --clients 8 --requests 50            # a quick check

For each server setting (--max-batch-size N, then 1) a real `python -m foodnet.serve` process
is started on 127.0.0.1 with a tiny model (a random-init MobileNetV3-small checkpoint at 32px,
built here: speed does not depend on the weights), and `--clients` concurrent clients (aiohttp,
one process) each send `--requests` POST /predict requests, one JPEG each, one after another.
Reported: errors (any answer but 200 with one predicted record), throughput, p50/p90/p99
latency, the batch sizes the server ran, and the throughput ratio. The report goes to
benchmarks/results/. The clients share the machine's cores with the server, which the report
says next to the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHOTO_SIZE = (320, 240)  # what a phone app might send after downscaling
N_PHOTOS = 16


def make_model(out: Path, arch: str, image_size: int) -> Path:
    """A foodnet checkpoint (random init) as foodnet.train would save it."""
    import torch

    from foodnet.data.demo import CLASS_NAMES
    from foodnet.models.transfer import create_model
    from foodnet.training.module import FoodClassifier

    torch.manual_seed(0)
    net = create_model(arch, num_classes=len(CLASS_NAMES), weights=None, freeze=True)
    preprocessing = net.preprocessing.override(image_size=image_size, crop_mode="squash")
    module = FoodClassifier(net, class_names=list(CLASS_NAMES), preprocessing=preprocessing)
    path = out / f"bench-{arch}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "epoch": 0}, path)
    return path


def make_photos(n: int) -> list[tuple[str, bytes]]:
    import numpy as np

    from foodnet.data.demo import CLASS_NAMES, draw_sample

    rng = np.random.default_rng(0)
    photos = []
    for index in range(n):
        label = index % len(CLASS_NAMES)
        buffer = io.BytesIO()
        draw_sample(label, rng, size=PHOTO_SIZE[0]).resize(PHOTO_SIZE).save(
            buffer, format="JPEG", quality=90)
        photos.append((f"{CLASS_NAMES[label]}_{index:02d}.jpg", buffer.getvalue()))
    return photos


class Server:
    """A `python -m foodnet.serve` process on 127.0.0.1, any free port."""

    def __init__(self, model: Path, max_batch_size: int, max_wait_ms: float, device: str,
                 threads: int):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"),
                                                          env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foodnet.serve", str(model), "--host", "127.0.0.1",
             "--port", "0", "--max-batch-size", str(max_batch_size), "--max-wait-ms",
             str(max_wait_ms), "--device", device, "--threads", str(threads),
             "--no-access-log"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in list(self.lines):
                if line.startswith("foodnet serve:") and " at http://" in line:
                    return line.split(" at ", 1)[1].split()[0]
            time.sleep(0.1)
        self.stop()
        raise SystemExit("the server did not start:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


async def load(url: str, photos: list[tuple[str, bytes]], clients: int, requests: int,
               timeout: float) -> dict:
    """`clients` concurrent clients, each sending `requests` requests one after another."""
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        for n in range(requests):
            name, data = photos[(index * requests + n) % len(photos)]
            form = aiohttp.FormData()
            form.add_field("file", data, filename=name, content_type="image/jpeg")
            start = time.perf_counter()
            try:
                async with session.post(url + "predict", data=form) as answer:
                    body = await answer.json()
                    ok = answer.status == 200 and len(body) == 1 and body[0]["predictions"] \
                        and body[0]["path"] == name
                    if not ok:
                        errors.append(f"HTTP {answer.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        seconds = time.perf_counter() - start
        async with session.get(url + "health") as answer:
            batches = (await answer.json())["batches"]
    return {"latencies": latencies, "errors": errors, "seconds": seconds, "batches": batches}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_setting(model: Path, photos, args, max_batch_size: int) -> dict:
    server = Server(model, max_batch_size, args.max_wait_ms, args.device, args.threads)
    try:
        url = server.wait_ready()
        # Warm-up (first forward passes, allocator, connection setup), not measured.
        asyncio.run(load(url, photos, min(args.clients, 8), 4, args.timeout))
        load_before = os.getloadavg()[0]
        cpu_before = os.times()
        result = asyncio.run(load(url, photos, args.clients, args.requests, args.timeout))
        cpu_after = os.times()
        load_after = os.getloadavg()[0]
    finally:
        code = server.stop()
    warm = {int(k): v for k, v in result["batches"].items()}  # includes the warm-up batches
    total = args.clients * args.requests
    lat = result["latencies"]
    return {
        "max_batch_size": max_batch_size,
        "requests": total,
        "errors": len(result["errors"]),
        "error_examples": result["errors"][:5],
        "seconds": result["seconds"],
        "throughput_rps": len(lat) / result["seconds"],
        "p50_ms": 1000 * percentile(lat, 50),
        "p90_ms": 1000 * percentile(lat, 90),
        "p99_ms": 1000 * percentile(lat, 99),
        "max_ms": 1000 * max(lat, default=float("nan")),
        "mean_batch": sum(k * v for k, v in warm.items()) / max(sum(warm.values()), 1),
        "batches": dict(sorted(warm.items())),
        "client_cpu_s": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "load_avg_before_after": [load_before, load_after],
        "server_exit": code,
    }


def report(args, results: list[dict], started: str) -> str:
    batched, single = results
    ratio = batched["throughput_rps"] / single["throughput_rps"]
    lines = [
        f"# foodnet serve under load: {args.arch} at {args.image_size}px on {args.device}",
        "",
        f"- started {started}; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}",
        f"- {args.clients} concurrent clients x {args.requests} requests each, per server "
        f"setting; one JPEG of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} per request (POST /predict, "
        f"multipart); {N_PHOTOS} different photos; clients and server on this machine "
        "(127.0.0.1), so they share its cores",
        f"- model: {args.arch}, random init (speed does not depend on the weights), "
        f"{args.image_size}px input; server: --max-wait-ms {args.max_wait_ms} "
        f"--threads {args.threads}",
        "- latency: from sending a request to its parsed answer, per request; throughput: "
        "answered requests / wall time of the measured run (after a warm-up)",
        "",
        "| server | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | mean batch "
        "| client CPU s | load avg (1 min) before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = ("dynamic batching, --max-batch-size " f"{r['max_batch_size']}"
                if r["max_batch_size"] > 1 else "batch size 1 (--max-batch-size 1)")
        before, after = r["load_avg_before_after"]
        lines.append(
            f"| {name} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
            f"{r['mean_batch']:.1f} | {r['client_cpu_s']:.0f} | {before:.1f} / {after:.1f} |")
    lines += [
        "",
        f"**Dynamic batching: {ratio:.2f}x the throughput of batch size 1** "
        f"(p50 {batched['p50_ms']:.0f} ms vs {single['p50_ms']:.0f} ms, "
        f"p99 {batched['p99_ms']:.0f} ms vs {single['p99_ms']:.0f} ms).",
        "",
        "Batch sizes the batching server ran (size: batches, warm-up included): "
        + ", ".join(f"{k}: {v}" for k, v in batched["batches"].items()),
    ]
    for r in results:
        if r["errors"]:
            lines += ["", f"Errors with --max-batch-size {r['max_batch_size']} (first 5):"]
            lines += [f"- {e}" for e in r["error_examples"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500, help="per client")
    parser.add_argument("--arch", default="mobilenet_v3_small")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's PyTorch threads: the clients need the other cores")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request, at most")
    parser.add_argument("--out", type=Path, help="report path (.md; a .json is written beside)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="foodnet-bench-serve-") as tmp:
        model = make_model(Path(tmp), args.arch, args.image_size)
        photos = make_photos(N_PHOTOS)
        results = []
        for max_batch_size in (args.max_batch_size, 1):
            print(f"--max-batch-size {max_batch_size}: {args.clients} clients x "
                  f"{args.requests} requests ...", flush=True)
            results.append(run_setting(model, photos, args, max_batch_size))
            r = results[-1]
            print(f"  {r['throughput_rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, p99 "
                  f"{r['p99_ms']:.1f} ms, errors {r['errors']}, mean batch "
                  f"{r['mean_batch']:.1f}", flush=True)
    text = report(args, results, started)
    out = args.out or HERE / "results" / (
        f"serve-{args.device}-{args.arch}-{args.image_size}px-"
        f"{args.clients}x{args.requests}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "started": started,
         "results": results}, indent=2) + "\n")
    print(text + f"\nwritten: {out} and {out.with_suffix('.json')}", flush=True)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
