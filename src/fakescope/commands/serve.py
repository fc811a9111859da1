"""`fakescope serve`: the web page and REST API (serving/app.py) on uvicorn."""

from __future__ import annotations

import ipaddress
import os

from ..errors import FakescopeError
from . import HelpFormatter, add_runtime_option


def _add_serve(sub):
    p = sub.add_parser(
        "serve",
        help="a web page and a REST API (/v1/predict, /v1/model, /docs) over one run",
        description="Load RUN once and serve it: the page at /, the API under /v1 (OpenAPI at "
        "/docs), /healthz, /readyz and Prometheus /metrics. Binds to 127.0.0.1 unless told "
        "otherwise; any other address needs an API key (--api-key or FAKESCOPE_API_KEY), which "
        "clients then send as the X-API-Key header. Concurrent requests are scored together "
        "in micro-batches; a full queue answers 503 with Retry-After.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", help="run folder made by `fakescope train`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="required key (default: $FAKESCOPE_API_KEY)")
    p.add_argument("--faces", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--device", default="auto")
    add_runtime_option(p)
    p.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    p.add_argument("--max-batch", type=int, default=16, help="images per forward pass (1: off)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="batch collection window")
    p.add_argument("--max-file-mb", type=float, default=25.0)
    p.add_argument("--max-files", type=int, default=16, help="files per request")
    p.add_argument("--max-video-seconds", type=float, default=600.0)
    p.add_argument("--max-inflight", type=int, default=256, help="requests at once; then 503")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request; then 504")
    p.set_defaults(func=cmd_serve)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(a) -> int:
    key = a.api_key or os.environ.get("FAKESCOPE_API_KEY") or None
    if not _loopback(a.host) and not key:
        raise FakescopeError(
            f"--host {a.host}: serving beyond this machine needs an API key "
            "(--api-key KEY or FAKESCOPE_API_KEY)"
        )
    import uvicorn

    from ..scoring.predictor import Predictor
    from ..serving.app import Limits, create_app

    limits = Limits(a.max_file_mb, a.max_files, a.max_video_seconds, a.max_inflight, a.timeout,
                    a.max_batch, a.max_wait_ms)  # fmt: skip
    pred = Predictor(
        a.run, device=a.device, faces=a.faces, frames=a.frames, progress=False, runtime=a.runtime
    )
    uvicorn.run(create_app(pred, limits, key), host=a.host, port=a.port, log_level="info")
    return 0


def add(sub) -> None:
    _add_serve(sub)
