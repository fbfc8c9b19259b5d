"""Predict classes of new photos: `python -m foodnet.predict MODEL INPUT... [--topk 5]`.

MODEL is a training checkpoint (.ckpt) or an export (.onnx / .pt2) with its sidecar JSON.
INPUT is image files, folders (searched recursively) or .txt lists ("image_path [label]" lines).
Exit status: 0 every image predicted, 1 some image could not be decoded (each one is reported on
stderr and in the output, the others are predicted), 2 bad model, input, output or arguments
(a missing input file, an --out that is a folder or not writable), checked before predicting.
Hidden files and folders (.thumbnails/, ._a.jpg) inside an input folder are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from foodnet.errors import EXIT_OK, EXIT_PARTIAL, positive_int, probability, run_cli
from foodnet.logs import console_logging

# torch comes with foodnet.inference.predictor, imported in run(): `--help` and an argument error
# answer in well under a second.
if TYPE_CHECKING:
    from foodnet.inference.predictor import Classifier

log = logging.getLogger(__name__)
CSV_COLUMNS = ("path", "rank", "label", "class", "prob", "unsure", "error")


def workers_option(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: use auto or a number of processes >= 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="foodnet predict", description=__doc__.split("\n\n")[0],
        epilog="exit status: 0 all predicted, 1 some image undecodable, 2 bad model/input/output/"
               "usage (docs/errors.md)")
    parser.add_argument("model", type=Path, help="a .ckpt checkpoint or an exported model")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (recursive) or .txt image lists")
    parser.add_argument("--topk", type=positive_int, default=5,
                        help="classes per image, most probable first (capped at the class count)")
    parser.add_argument("--min-confidence", type=probability, default=0.0, metavar="P",
                        help="answer unsure (\"unsure\": true, the top-k still given) when the "
                             "top class's calibrated probability is below P (default: never)")
    parser.add_argument("--tta", choices=("none", "flip", "five"), default="none",
                        help="test-time augmentation: average the probabilities over the image "
                             "and its mirror (flip) or the centre and 4 corner crops (five); "
                             "each record then says which (\"tta\")")
    parser.add_argument("--format", choices=("json", "csv"), default="json")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--workers", type=workers_option, default="auto",
                        help="processes decoding images while the model runs (auto: one per "
                             "usable core, at most 8; 0: decode in the main process)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available")
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    return parser.parse_args(argv)


def predict_records(classifier: Classifier, paths: list[Path], topk: int,
                    batch_size: int, num_workers: int | str = "auto",
                    min_confidence: float = 0.0) -> list[dict]:
    """One record per image: {"path", "predictions": [{"label", "class", "prob"}], "unsure"}
    (or "error")."""
    from foodnet.inference.predictor import predict_images, prediction_record

    records = []
    for prediction in predict_images(classifier, paths, batch_size, num_workers):
        if prediction.error is not None:
            log.error("error: %s", prediction.error)
        record = prediction_record(prediction, classifier.info.class_names, topk,
                                   min_confidence=min_confidence)
        if classifier.tta != "none":  # averaged over views: say so next to the answer
            record["tta"] = classifier.tta
        records.append(record)
    return records


def write_csv(records: list[dict], stream: TextIO) -> None:
    """Long format: one row per (image, rank); an unreadable image is one row with its error."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        if "error" in record:
            writer.writerow([record["path"], "", "", "", "", "", record["error"]])
        for rank, p in enumerate(record["predictions"], start=1):
            writer.writerow([record["path"], rank, p["label"], p["class"], f"{p['prob']:.6f}",
                             str(record["unsure"]).lower(), ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console_logging("stderr")
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    from foodnet.inference.inputs import check_output, collect_images
    from foodnet.inference.predictor import open_classifier

    # Output, model and inputs before any prediction: a mistake costs seconds, not the whole run.
    if args.out:
        check_output(args.out)
    classifier = open_classifier(args.model, device=args.device, tta=args.tta)
    paths = collect_images(args.inputs)
    records = predict_records(classifier, paths, args.topk, args.batch_size, args.workers,
                              args.min_confidence)
    failed = sum("error" in r for r in records)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    stream = args.out.open("w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        if args.format == "json":
            json.dump(records, stream, indent=2, ensure_ascii=False)
            stream.write("\n")
        else:
            write_csv(records, stream)
    finally:
        if args.out:
            stream.close()
    if failed:
        log.warning("%d of %d images could not be read", failed, len(records))
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
