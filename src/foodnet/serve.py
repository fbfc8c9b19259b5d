"""Serve a trained model: `python -m foodnet.serve MODEL [--host 127.0.0.1] [--port 8000]`.

MODEL is a training checkpoint (.ckpt) or an export (.onnx, .pt2) with its sidecar JSON. The page
at http://HOST:PORT/ classifies a photo you choose, drop or paste; POST /predict is the JSON API
(docs/serve.md, OpenAPI at /docs). Ctrl-C or SIGTERM finishes the requests in flight and stops.
Exit status: 2 bad model or arguments (or the port is taken), 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path

import torch
import uvicorn

from foodnet.errors import (
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    ConfigError,
    positive_int,
    probability,
    run_cli,
)
from foodnet.inference.card import model_card
from foodnet.inference.predictor import open_classifier
from foodnet.inference.server import create_app
from foodnet.logs import console_logging

log = logging.getLogger("foodnet.serve")
MIB = 1024 * 1024


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="foodnet serve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a .ckpt checkpoint or an exported model")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; the default is reachable from this machine only")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--max-batch-size", type=positive_int, default=32,
                        help="images of concurrent requests run together, up to this many")
    parser.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                        help="how long the first image of a batch waits for others")
    parser.add_argument("--max-upload-mb", type=non_negative_float, default=20.0,
                        help="largest request body in MiB; larger ones answer 413")
    parser.add_argument("--min-confidence", type=probability, default=0.0, metavar="P",
                        help="answers whose top probability is below P say \"unsure\": true "
                             "(a request's min_confidence field overrides it)")
    parser.add_argument("--tta", choices=("none", "flip", "five"), default="none",
                        help="test-time augmentation: average the probabilities over the image "
                             "and its mirror (flip) or the centre and 4 corner crops (five); "
                             "/info says which")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available")
    parser.add_argument("--threads", type=positive_int,
                        help="PyTorch's CPU threads for the model (default: PyTorch's, one per "
                             "core); fewer leave cores to decoding and to other processes")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="log one line per request")
    return parser.parse_args(argv)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a clear error, not uvicorn's."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: let the resolver pick
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); pick another "
                          "--port (0: any free port)") from None
    return sock


def _stop_on(signum: int, frame) -> None:
    # Runs after uvicorn's graceful shutdown, which re-raises the signal that stopped it.
    raise SystemExit(EXIT_SIGNAL_BASE + signum)


async def _serve(server: uvicorn.Server, sock: socket.socket, name: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("foodnet serve: %s at http://%s:%d/ (API docs: /docs; Ctrl-C stops)",
                 name, shown, port)
    await task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console_logging()
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = open_classifier(args.model, device=args.device, tta=args.tta)
    # The card says how this server answers, too: averaged over views or not.
    card = {**model_card(args.model), "tta": args.tta}
    sock = bind(args.host, args.port)
    if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        log.warning("warning: --host %s: the server is reachable from other machines, without "
                    "authentication", args.host)
    app = create_app(classifier, card, max_batch_size=args.max_batch_size,
                     max_wait=args.max_wait_ms / 1000,
                     max_upload_bytes=int(args.max_upload_mb * MIB),
                     min_confidence=args.min_confidence)
    config = uvicorn.Config(app, log_level="info", access_log=args.access_log,
                            timeout_graceful_shutdown=10)
    previous = {signum: signal.signal(signum, _stop_on)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(_serve(uvicorn.Server(config), sock, card.get("name", str(args.model))))
    except SystemExit as stop:
        log.info("foodnet serve: stopped")
        return int(stop.code or 0)
    finally:
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
