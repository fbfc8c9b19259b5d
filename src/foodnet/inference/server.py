"""The web app of `foodnet serve`: a page at /, a JSON API, OpenAPI docs at /docs.

FastAPI parses requests (multipart via python-multipart) and uvicorn serves them; the images of
concurrent requests run through the model together (foodnet.inference.batching). A client's
mistake never reaches the model: each one answers a 4xx with a JSON body {"error": "..."}.

    POST /predict   multipart: one or more `file` fields, optional `topk` (default 5) and
                    `min_confidence` (default: the server's --min-confidence); returns the
                    records of `foodnet predict --format json`, path = the uploaded name
    GET  /health    200 {"status": "ok"} once the model is loaded
    GET  /info      the model card (foodnet.inference.card)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foodnet.data.images import decode_rgb
from foodnet.errors import ImageLoadError
from foodnet.inference.batching import Batcher
from foodnet.inference.predictor import Classifier, Prediction, prediction_record

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_TOPK = 5  # the page shows five classes; the API's `topk` default


class BodyLimit:
    """413 for a request body above `max_bytes`, declared (Content-Length) or streamed (chunked).

    The body is read to its end and dropped before the answer, so that a client still sending
    reads the 413 instead of a reset connection; nothing of it is kept in memory. (Starlette's
    own RequestBodyLimitMiddleware answers in plain text and leaves the body unread.)"""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: int | None = None) -> HTTPException:
        size_text = f" ({size} bytes)" if size is not None else ""
        return HTTPException(413, f"request body too large{size_text}: the limit is "
                                  f"{self.max_bytes} bytes (foodnet serve --max-upload-mb)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _drain(receive)
            too_large = self._too_large(int(declared))
            await error_response(too_large.status_code, too_large.detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive)
                    # FastAPI passes an HTTPException raised while it reads the body through.
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def error_response(status: int, error: str, **extra) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


def _validation_message(err: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: `file: Field required; topk: ...`."""
    problems = []
    for problem in err.errors():
        field = ".".join(str(part) for part in problem.get("loc", ())
                         if part != "body" and not isinstance(part, int))
        message = problem.get("msg", "invalid")
        if "UploadFile" in message:  # pydantic's words for a text field where a file belongs
            message = "expected a file upload, got a text value"
        problems.append(f"{field or 'request'}: {message}")
    hint = (" (POST multipart/form-data: one or more `file` fields, optional integer `topk` >= 1"
            " and `min_confidence` in [0, 1])")
    return "; ".join(problems) + hint


def create_app(classifier: Classifier, card: dict, max_batch_size: int, max_wait: float,
               max_upload_bytes: int, min_confidence: float = 0.0) -> FastAPI:
    """The app, its batcher started and stopped with the app's lifespan. Answers are "unsure"
    below `min_confidence` unless a request sets its own."""
    batcher = Batcher(classifier.probabilities, max_batch_size=max_batch_size, max_wait=max_wait)
    class_names = classifier.info.class_names

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            log.info("batches run, by size: %s", dict(sorted(batcher.batch_sizes.items())))

    app = FastAPIOffline(
        title="foodnet", version="1", lifespan=lifespan,
        description=f"Image classifier `{card.get('name')}` ({card.get('arch')}, "
                    f"{card.get('num_classes')} classes). The page is at /.")
    app.state.batcher = batcher
    app.state.min_confidence = min_confidence
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 405:
            message = (f"{request.method} {request.url.path}: method not allowed "
                       f"(allowed: {(err.headers or {}).get('Allow', '?')})")
        elif err.status_code == 404:
            message = f"{request.url.path}: not found (the API is listed at /docs)"
        else:
            message = str(err.detail)
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(err))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health", summary="200 once the model is loaded")
    async def health() -> dict:
        # Batch size -> batches run so far: shows whether dynamic batching is at work.
        batches = {str(size): count for size, count in sorted(batcher.batch_sizes.items())}
        return {"status": "ok", "model": card.get("name"), "batches": batches}

    @app.get("/info", summary="The model card")
    async def info() -> dict:
        return card

    def preprocess(name: str, data: bytes):
        try:
            return classifier.transform(decode_rgb(data, name)), None
        except ImageLoadError as err:
            return None, str(err)

    @app.post("/predict", summary="Classify one or more images",
              responses={400: {"description": "bad form fields"},
                         413: {"description": "request body above the limit"},
                         422: {"description": "no uploaded file is a readable image"}})
    async def predict(file: Annotated[list[UploadFile], File(description="images (repeat)")],
                      topk: Annotated[int, Form(ge=1, description="classes per image")]
                      = DEFAULT_TOPK,
                      min_confidence: Annotated[float | None, Form(
                          ge=0, le=1, description="below this top probability the answer is "
                                                  "unsure (the top-k still given)")] = None,
                      ) -> list[dict]:
        names = [upload.filename or f"file{index}" for index, upload in enumerate(file)]
        uploads = [(name, await upload.read()) for name, upload in zip(names, file, strict=True)]
        # Decoding runs in a worker thread, next to the batcher's forward passes.
        loaded = await run_in_threadpool(lambda: [preprocess(*upload) for upload in uploads])
        rows = iter(await batcher.predict([tensor for tensor, _ in loaded if tensor is not None]))
        predictions = [Prediction(Path(name), None if tensor is None else next(rows), error)
                       for name, (tensor, error) in zip(names, loaded, strict=True)]
        threshold = min_confidence if min_confidence is not None else app.state.min_confidence
        records = [prediction_record(p, class_names, topk, name=name, min_confidence=threshold)
                   for p, name in zip(predictions, names, strict=True)]
        errors = [record["error"] for record in records if "error" in record]
        if len(errors) == len(records):
            return error_response(422, "; ".join(errors), records=records)
        return records

    return app
