"""`fakescope serve` over real HTTP: a uvicorn server in a subprocess on a free port, the real
small run, httpx as the client (issue 11)."""

from __future__ import annotations

import base64
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import pytest
from PIL import Image

from .conftest import SG, sg_images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run, tmp, *extra):
        self.port = _free_port()
        self.tmp = tmp
        env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
        # to a file, not a pipe nobody reads: a full pipe would stall the server mid-request,
        # and the file is there to read when a test fails
        self.log = tmp / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fakescope.cli", "serve", str(run), "--port", str(self.port),
             *extra],
            env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def close(self):
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture(scope="module")
def server(small_run, tmp_path_factory):
    s = Server(small_run, tmp_path_factory.mktemp("srv"), "--max-file-mb", "2",
               "--max-files", "4", "--max-video-seconds", "60")  # fmt: skip
    yield s
    s.close()


def _post(server, files, explain=False, headers=None, timeout=120):
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(f"{server.url}/v1/predict", files=parts, params={"explain": int(explain)},
                      headers=headers or {}, timeout=timeout)  # fmt: skip


def test_health_model_docs_and_metrics(server, small_run):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    m = httpx.get(server.url + "/v1/model").json()
    from fakescope.runs import load_run

    run = load_run(small_run)
    assert m["backbone"] == "mobilenet_v2" and m["input_size"] == 160
    assert m["threshold"] == pytest.approx(run.threshold)
    assert m["threshold_chosen"]["computed_on"] == "val"
    assert m["training_data"][0]["sha256"] == run.meta.sources[0]["sha256"]
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "/v1/model" in schema["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200
    page = httpx.get(server.url + "/").text
    assert "<script>" in page and "http://" not in page.replace("http://www.w3.org", "")
    metrics = httpx.get(server.url + "/metrics").text
    assert 'fakescope_requests_total{path="/v1/model",status="200"}' in metrics
    assert "fakescope_request_seconds_bucket" in metrics


def test_same_score_as_the_command_line(server, small_run):
    from fakescope.scoring.predictor import Predictor

    img = sg_images("fake", n=1)[0]
    cli_rows = [r.as_dict() for r in Predictor(small_run, progress=False).predict([img])]
    r = _post(server, [(img.name, img.read_bytes())])
    assert r.status_code == 200
    (f,) = r.json()["files"]
    assert f["status"] == 200 and f["name"] == img.name
    api = [(row["box"] and tuple(row["box"]), row["score"]) for row in f["rows"]]
    ref = [(row["box"] and tuple(row["box"]), row["score"]) for row in cli_rows]
    assert len(api) == len(ref)
    for (b1, s1), (b2, s2) in zip(api, ref, strict=True):
        assert b1 == b2 and s1 == pytest.approx(s2, abs=1e-6)


def test_explain_returns_png_overlays(server):
    img = sg_images("real", n=1)[0]
    f = _post(server, [(img.name, img.read_bytes())], explain=True).json()["files"][0]
    ov = f["rows"][0]["overlay_png"]
    assert ov.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(ov.split(",", 1)[1])))
    assert im.mode == "RGB" and min(im.size) > 32


def test_concurrent_explain_requests_all_answer(server):
    # Grad-CAM of several files and requests at once, beside scoring: it must run on the
    # model's own thread (two threads in one network corrupted the heap and killed the server)
    imgs = sg_images("real", n=2) + sg_images("fake", n=2)
    files = [(p.name, p.read_bytes()) for p in imgs]
    codes, lock = [], threading.Lock()

    def client(explain):
        try:
            r = _post(server, files, explain=explain)
            got = (r.status_code, all("overlay_png" in f["rows"][0] for f in r.json()["files"]))
        except httpx.HTTPError as e:
            got = (repr(e), None)
        with lock:
            codes.append((explain, got))

    threads = [threading.Thread(target=client, args=(k % 3 != 0,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes, key=str) == [(False, (200, False))] * 2 + [(True, (200, True))] * 4, (
        codes, server.log.read_text()[-2000:])  # fmt: skip
    assert httpx.get(server.url + "/healthz").status_code == 200


def _png_header(w, h) -> bytes:
    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def _jpeg_header(w, h) -> bytes:
    """A baseline JPEG whose frame header claims w x h pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def hostile_files() -> list[tuple[str, bytes, int, str]]:
    """(name, content, expected status, expected words in the message): 30 files."""
    good = sg_images("fake", n=1)[0].read_bytes()
    png = io.BytesIO()
    Image.open(sg_images("real", n=1)[0]).save(png, format="PNG")
    png = png.getvalue()
    rnd = bytes((i * 7919 + 13) % 256 for i in range(3000))
    return [
        ("empty.jpg", b"", 400, "empty file"),
        ("empty.mp4", b"", 400, "empty file"),
        ("half.jpg", good[: len(good) // 2], 422, "corrupt or truncated"),
        ("tenth.jpg", good[: len(good) // 10], 422, "corrupt or truncated"),
        ("header-only.jpg", good[:600], 422, ""),
        ("half.png", png[: len(png) // 2], 422, ""),
        ("random.jpg", rnd, 415, "not an image or video"),
        ("random.bin", os.urandom(5000), 415, "not an image or video"),
        ("random.mp4", b"\x00\x00\x00\x18ftypisom" + os.urandom(4000), 422, "not a readable video"),
        ("bomb.png", _png_header(100_000, 100_000), 413, "too large"),
        ("huge.jpg", _jpeg_header(60_000, 60_000), 413, "too large"),
        ("big.png", _png_header(20_000, 10_000), 413, "too large"),
        ("oversize.jpg", good + b"\0" * (3 * 2**20), 413, "file too large"),
        ("text.mp4", b"this is not a video\n" * 50, 415, "not an image or video"),
        ("text.jpg", b"hello world\n" * 100, 415, "not an image or video"),
        ("notes.png", b'{"json": "not a png"}', 415, "not an image or video"),
        ("page.gif", b"<html><body>hi</body></html>", 415, "not an image or video"),
        ("doc.jpg", b"%PDF-1.4\n" + rnd, 415, "not an image or video"),
        ("archive.png", b"PK\x03\x04" + rnd, 415, "not an image or video"),
        ("elf.webp", b"\x7fELF" + rnd, 415, "not an image or video"),
        ("pickle.jpg", b"\x80\x04\x95" + rnd, 415, "not an image or video"),
        ("../../etc/passwd", b"root:x:0:0\n", 415, "not an image or video"),
        ("..\\..\\win.ini", b"[fonts]\n", 415, "not an image or video"),
        ("nul\x00name.jpg", rnd, 415, "not an image or video"),
        ("gif-junk.gif", b"GIF89a" + rnd, 422, ""),
        ("bmp-junk.bmp", b"BM" + rnd, 422, ""),
        ("tiff-junk.tif", b"II*\x00" + rnd, 422, ""),
        ("webp-junk.webp", b"RIFF\x00\x10\x00\x00WEBPVP8 " + rnd, 422, ""),
        ("riff-avi.avi", b"RIFF\x00\x10\x00\x00AVI " + rnd, 422, "video"),
        ("mkv-junk.mkv", b"\x1a\x45\xdf\xa3" + rnd, 422, "not a readable video"),
    ]


def test_thirty_hostile_files_each_get_a_4xx_and_the_server_goes_on(server):
    files = hostile_files()
    assert len(files) == 30
    for name, data, status, words in files:
        r = _post(server, [(name, data)])
        f = r.json()["files"][0]
        assert (r.status_code, f["status"]) == (status, status), (name, f)
        assert words in f["error"] and "Traceback" not in f["error"], (name, f["error"])
        assert "/" not in f["name"] and "\\" not in f["name"]
    good = sg_images("real", n=1)[0]
    r = _post(server, [(good.name, good.read_bytes())])
    assert r.status_code == 200 and r.json()["files"][0]["rows"][0]["score"] is not None
    # every upload's private copy is gone
    left = [p for d in server.tmp.glob("fakescope-serve-*") for p in d.iterdir()]
    assert left == []


def test_mixed_request_reports_each_file(server):
    good = sg_images("real", n=2)
    r = _post(server, [(good[0].name, good[0].read_bytes()), ("bad.jpg", b"nope"),
                       (good[1].name, good[1].read_bytes())])  # fmt: skip
    assert r.status_code == 200
    assert [f["status"] for f in r.json()["files"]] == [200, 415, 200]


def test_too_many_files_and_unknown_routes(server):
    img = sg_images("real", n=1)[0].read_bytes()
    r = _post(server, [(f"{i}.jpg", img) for i in range(5)])
    assert r.status_code == 413 and "at most 4" in r.json()["error"]
    assert httpx.post(server.url + "/v1/predict").status_code == 422  # no files at all


def test_an_api_key_is_needed_beyond_localhost(small_run, tmp_path):
    argv = [sys.executable, "-m", "fakescope.cli", "serve", str(small_run), "--host", "0.0.0.0"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs an API key" in r.stderr


def test_api_key_and_a_full_server_answer_clearly(small_run, tmp_path):
    s = Server(small_run, tmp_path, "--api-key", "s3cret", "--max-inflight", "1")
    try:
        img = sg_images("fake", n=1)[0]
        files = [(img.name, img.read_bytes())]
        assert _post(s, files).status_code == 401
        assert httpx.get(s.url + "/healthz").status_code == 200  # probes need no key
        assert _post(s, files, headers={"X-API-Key": "s3cret"}).status_code == 200
        codes, lock = [], threading.Lock()

        def client():
            r = _post(s, files * 3, headers={"X-API-Key": "s3cret"}, explain=True)
            with lock:
                codes.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (200, None) in codes and (503, "1") in codes, (codes, s.log.read_text()[-3000:])
        assert {c for c, _ in codes} <= {200, 503}
        assert _post(s, files, headers={"X-API-Key": "s3cret"}).status_code == 200
    finally:
        s.close()
    assert SG.is_dir()


def test_videos_get_frame_scores_and_a_length_limit(server, tmp_path):
    from .videos import write_video

    face = Image.open(sg_images("fake", n=1)[0]).convert("RGB")
    short = write_video(tmp_path / "short.mp4", [face] * 6, fps=5)
    r = _post(server, [("short.mp4", short.read_bytes())])
    assert r.status_code == 200
    rows = r.json()["files"][0]["rows"]
    kinds = [row["kind"] for row in rows]
    assert kinds[0] == "video" and kinds.count("frame") >= 3 and rows[0]["score"] is not None
    small = face.resize((64, 64))
    long = write_video(tmp_path / "long.mp4", [small] * 310, fps=5)  # 62 s, limit 60
    r = _post(server, [("long.mp4", long.read_bytes())])
    assert r.status_code == 413 and "exceeds the limit of 60 s" in r.json()["files"][0]["error"]


def test_a_request_over_its_time_limit_gets_504(small_run, tmp_path):
    s = Server(small_run, tmp_path, "--timeout", "0.05")
    try:
        img = sg_images("real", n=1)[0]
        r = _post(s, [(img.name, img.read_bytes())] * 3, explain=True)
        assert r.status_code == 504 and "longer than 0.05 s" in r.json()["error"]
        assert httpx.get(s.url + "/healthz").status_code == 200
    finally:
        s.close()
