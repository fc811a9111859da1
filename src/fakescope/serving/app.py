"""The service: FastAPI over one loaded ``Predictor`` (the same path as `fakescope predict`).

Every upload is sniffed by its first bytes (never by its name), written to a private
temporary file under a generated name, decoded and face-cropped on a worker thread, scored in a
micro-batch with other requests' faces, and removed. Nothing a client sends is used as a path
and no pickle is ever loaded. Each bad file gets its own 4xx and the CLI's message; the server
goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from ..data.images import is_video
from ..errors import BadInput, TooLarge
from ..messages import one_line
from .batcher import Busy, MicroBatcher

API = "/v1"


@dataclass
class Limits:
    max_file_mb: float = 25.0  # per uploaded file
    max_files: int = 16  # per request
    max_video_seconds: float = 600.0
    max_inflight: int = 256  # requests being handled; more get 503 + Retry-After
    timeout: float = 60.0  # seconds per request; then 504
    max_batch: int = 16  # images per forward pass; 1 = no micro-batching
    max_wait_ms: float = 5.0  # how long a batch waits for more requests


# first bytes -> the extension the private copy gets (what decides image or video)
_MAGIC = [
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"\x1a\x45\xdf\xa3", ".mkv"),
    (b"\x00\x00\x01\xba", ".mpg"),
    (b"\x00\x00\x01\xb3", ".mpg"),
]


def sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    if head[4:8] == b"ftyp":
        return ".mp4"
    return next((ext for magic, ext in _MAGIC if head.startswith(magic)), None)


def display_name(name: str | None) -> str:
    """The client's file name, for display only: its last part, printable, at most 120 chars."""
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1] or "upload"
    return one_line(base)[:120]


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def create_app(predictor, limits: Limits | None = None, api_key: str | None = None) -> FastAPI:
    limits = limits or Limits()
    registry = CollectorRegistry()
    requests_total = Counter("fakescope_requests", "HTTP requests", ["path", "status"],
                             registry=registry)  # fmt: skip
    buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
    latency = Histogram("fakescope_request_seconds", "request latency", ["path"],
                        registry=registry, buckets=buckets)  # fmt: skip
    batch_sizes = Histogram("fakescope_batch_images", "images per forward pass",
                            registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip

    def score(images):
        batch_sizes.observe(len(images))
        return predictor.scorer.score_images(images)

    # every admitted request's files fit in the queue: admission (max_inflight) is the limit
    queue = limits.max_inflight * limits.max_files
    batcher = MicroBatcher(score, limits.max_batch, limits.max_wait_ms / 1000, queue)
    workdir = Path(tempfile.mkdtemp(prefix="fakescope-serve-"))
    os.chmod(workdir, 0o700)
    state = {"ready": False, "inflight": 0}
    # decoding and the face stage: as many at once as there are cores, no more
    prepare_slots = asyncio.Semaphore(max(1, (os.cpu_count() or 2)))

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        from PIL import Image

        await batcher.score([Image.new("RGB", (64, 64), (128, 128, 128))])  # warm up
        state["ready"] = True
        yield
        await batcher.stop()
        for f in workdir.glob("*"):
            f.unlink(missing_ok=True)
        workdir.rmdir()

    app = FastAPI(
        title="fakescope",
        version="1",
        summary="Deepfake face detection: which face is fake, how sure, and why.",
        lifespan=lifespan,
    )
    max_bytes = int(limits.max_file_mb * 2**20)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0, path = time.perf_counter(), request.url.path
        try:
            if path.startswith(API) and api_key is not None:
                given = request.headers.get("x-api-key") or request.headers.get(
                    "authorization", ""
                ).removeprefix("Bearer ")
                if given != api_key:
                    raise _Refused(401, "missing or wrong API key (header X-API-Key)")
            length = int(request.headers.get("content-length") or 0)
            if length > max_bytes * limits.max_files + 2**20:
                raise _Refused(413, f"request too large ({length:,} bytes)")
            if path == f"{API}/predict":
                if state["inflight"] >= limits.max_inflight:
                    raise _Refused(503, "busy: too many requests in progress; retry shortly")
                state["inflight"] += 1
                try:
                    response = await asyncio.wait_for(call_next(request), limits.timeout)
                except TimeoutError:
                    raise _Refused(504, f"took longer than {limits.timeout:g} s") from None
                finally:
                    state["inflight"] -= 1
            else:
                response = await call_next(request)
        except _Refused as r:
            headers = {"Retry-After": "1"} if r.status == 503 else {}
            response = JSONResponse({"error": r.message}, r.status, headers=headers)
        known = path if path in (f"{API}/predict", f"{API}/model", "/", "/healthz",
                                 "/readyz", "/metrics") else "other"  # fmt: skip
        requests_total.labels(known, str(response.status_code)).inc()
        latency.labels(known).observe(time.perf_counter() - t0)
        return response

    async def one_file(upload: UploadFile, explain: bool) -> dict:
        t0 = time.perf_counter()
        name = display_name(upload.filename)
        try:
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise _Refused(413, f"{name}: file too large (limit {limits.max_file_mb:g} MB)")
            if not data:
                raise _Refused(400, f"{name}: empty file (0 bytes)")
            ext = sniff(data[:16])
            if ext is None:
                raise _Refused(415, f"{name}: not an image or video type fakescope reads")
            private = workdir / f"{uuid.uuid4().hex}{ext}"
            private.write_bytes(data)
            try:
                rows = await _score_file(private, name, explain)
            finally:
                private.unlink(missing_ok=True)
        except _Refused as r:
            return {"name": name, "status": r.status, "error": r.message, "rows": []}
        errors = [r["error"] for r in rows if r["error"]]
        status = 200 if len(errors) < len(rows) else 422
        return {"name": name, "status": status, "error": errors[0] if status != 200 else None,
                "rows": rows, "ms": round((time.perf_counter() - t0) * 1000, 1)}  # fmt: skip

    async def _score_file(private: Path, name: str, explain: bool) -> list[dict]:
        if is_video(private):
            from ..data.video import duration_seconds

            try:
                secs = await run_in_threadpool(duration_seconds, private)
            except BadInput as e:
                raise _Refused(422, str(e).replace(str(private), name)) from None
            if secs is not None and secs > limits.max_video_seconds:
                raise _Refused(413, f"{name}: video of {secs:.0f} s exceeds the limit of "
                                    f"{limits.max_video_seconds:g} s")  # fmt: skip
        async with prepare_slots:
            prep = await run_in_threadpool(predictor.prepare_file, private, name)
        if isinstance(prep.failure, TooLarge):
            raise _Refused(413, prep.rows[0].error)
        try:
            scores = await batcher.score([u.image for u in prep.units])
        except Busy:
            raise _Refused(503, "busy: the scoring queue is full; retry shortly") from None
        if explain:  # Grad-CAM runs the network: only on its own thread (batcher.py)
            rows = await batcher.on_model_thread(predictor.finish_file, prep, scores, True)
        else:
            rows = await run_in_threadpool(predictor.finish_file, prep, scores, False)
        out = []
        for r in rows:
            d = r.as_dict()
            overlay = d.pop("overlay", None)
            if overlay is not None:
                from ..scoring.explain import png_bytes

                d["overlay_png"] = (
                    "data:image/png;base64," + base64.b64encode(png_bytes(overlay)).decode()
                )
            d["path"] = name
            d.pop("explanation", None)
            out.append(d)
        return out

    @app.post(f"{API}/predict", summary="score uploaded images and videos, face by face")
    async def predict(
        files: list[UploadFile] = File(..., description="images or videos"),
        explain: bool = Query(False, description="add a Grad-CAM overlay (PNG) per face"),
    ):
        if len(files) > limits.max_files:
            return JSONResponse(
                {"error": f"{len(files)} files; at most {limits.max_files} per request"}, 413
            )
        results = await asyncio.gather(*(one_file(f, explain) for f in files))
        ok = [r for r in results if r["status"] == 200]
        body = {
            "threshold": predictor.threshold,
            "faces": predictor.faces,
            "files": list(results),
        }
        if any(r["status"] == 503 for r in results) and not ok:
            return JSONResponse(body, 503, headers={"Retry-After": "1"})
        return JSONResponse(body, 200 if ok else results[0]["status"])

    @app.get(f"{API}/model", summary="what model answers, and how its threshold was chosen")
    async def model():
        run = predictor.run
        meta, s = run.meta, run.spec
        tests = {}
        for f in sorted(glob.glob(str(run.path / "eval-*" / "metrics.json"))):
            m = json.loads(Path(f).read_text())
            tests[Path(f).parent.name] = {
                k: m.get(k) for k in ("split", "auc", "ap", "f1", "precision", "recall", "eer")
            }
        return {
            "backbone": s.backbone,
            "head": s.head,
            "input_size": s.input_size,
            "tta": s.tta,
            "threshold": predictor.threshold,
            "threshold_chosen": {
                k: predictor.scorer.thresholds.get(k) for k in ("criterion", "computed_on", "n_val")
            },  # fmt: skip
            "runtime": predictor.scorer.engine,
            "faces": {"mode": predictor.faces, "margin": meta.face_margin},
            "training_data": [
                {k: src.get(k) for k in ("name", "sha256", "counts")} for src in meta.sources
            ],
            "test_metrics": tests,
            "limits": limits.__dict__,
        }

    @app.get("/healthz", summary="alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="model loaded and warm")
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, 503)
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    page = (Path(__file__).parent / "page.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    return app
