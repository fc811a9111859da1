"""Scoring files with a trained run: images, folders and videos, optionally through the face stage.

Every input file yields one or more rows (one per face when faces are on, plus per-frame rows for
videos). A file that cannot be used yields one row with ``error`` set; the batch goes on.

Video rule: each sampled frame is scored by its most suspicious face (max over faces); the video
score is the mean of the top half of those frame scores (top-k mean, k = ceil(frames / 2)), so a
swap visible in part of the clip is not averaged away by frames where the face is turned away.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import is_video, list_files, load_rgb, to_rgb
from ..errors import BadInput, FakescopeError
from ..runs import Run, load_run
from .scorer import Later, Scorer

# Batches whose rows may wait for the run's network to confirm an export's scores near the
# threshold, pooled into one call (Scorer.score_later): at about one such image in twelve,
# eight wait for 6 batches in the mean; past this many batches they are confirmed anyway, so
# rows (and a CSV written as it goes) lag the files scored by a few hundred at most.
MAX_WAITING = 16


@dataclass
class Row:
    path: str
    score: float | None = None
    verdict: str | None = None  # "fake" | "real" | None when the file failed
    error: str | None = None
    face: int | None = None  # index of the face in the image/frame
    box: tuple[int, int, int, int] | None = None
    face_confidence: float | None = None
    frame: int | None = None  # frame index for video rows
    kind: str = "image"  # image | face | frame | video
    explanation: str | None = None  # path of a Grad-CAM overlay
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


@dataclass
class _Unit:
    """One image the model will see, and the row it fills in."""

    image: object  # PIL image at any size
    row: Row


@dataclass
class Prepared:
    """A decoded file after the face stage, waiting for its scores (``Predictor.prepare_file``)."""

    path: Path
    name: str
    units: list[_Unit]
    rows: list[Row]
    failure: BadInput | None = None  # why the file could not be used, when it could not
    tensors: object = None  # the units as the model's input, made ahead by ``predict``


class _Inline:
    """An executor that runs each task as it is submitted: ``workers=0``, no overlap."""

    def submit(self, fn, *args):
        f = Future()
        f.set_result(fn(*args))
        return f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _kind(path: Path) -> str:
    return "video" if is_video(path) else "image"


def video_score(frame_scores: list[float]) -> float:
    top = sorted(frame_scores, reverse=True)[: max(1, math.ceil(len(frame_scores) / 2))]
    return float(np.mean(top))


class Predictor:
    """Files, folders, videos and in-memory images to rows, through the face stage and the
    run's ``Scorer``. ``predict_image`` is the in-memory API; ``predict`` walks files."""

    def __init__(
        self,
        run: str | Path | Run,
        device="auto",
        batch_size=16,
        faces="auto",
        face_margin: float | None = None,
        frames=16,
        threshold: float | None = None,
        progress=True,
        runtime: str = "auto",
        workers: int = 2,
        scorer: Scorer | None = None,
    ):
        self.run = run if isinstance(run, Run) else load_run(run)
        # a Scorer given is used as it is (the benchmark's plain baseline, which must not
        # select the fast runtime: that changes malloc for the whole process)
        self.scorer = scorer or Scorer.of_run(self.run, device, batch_size, runtime)
        # Grad-CAM needs the unfolded network, on the scorer's device
        self.model = self.scorer.torch_runtime().prepare(self.run.model).eval()
        self.batch_size, self.frames, self.progress = batch_size, frames, progress
        self.workers = workers
        self.threshold = self.scorer.threshold if threshold is None else float(threshold)
        self.faces = faces
        # Scoring whole images needs no more pixels than twice the network's input: big JPEGs
        # are decoded at reduced scale then. The face stage needs them all (small faces).
        self._least_side = 2 * self.run.input_size if faces == "never" else None
        margin = face_margin or self.run.meta.face_margin
        self._cropper = None
        if faces != "never":
            from ..data.faces import FaceCropper

            self._cropper = FaceCropper(mode=faces, margin=margin)

    def predict_image(self, image, name: str = "<image>", explain: bool = False) -> list[Row]:
        """One row per face (or one for the whole image) of a PIL image or an HxWx3 uint8
        array: box, score, verdict. ``explain`` puts a Grad-CAM overlay (HxWx3 uint8 array)
        in each row's ``extra["overlay"]``."""
        im = to_rgb(image if isinstance(image, Image.Image) else Image.fromarray(image))
        units = self._image_units(im, name)
        if not units:
            return [Row(name, error=f"{name}: no face found", kind="image")]
        self._score(units)
        if explain:
            from .explain import unit_overlays

            for u, ov in zip(units, unit_overlays(self, units), strict=True):
                u.row.extra["overlay"] = ov
        return [u.row for u in units]

    def _score(self, units: list[_Unit]) -> None:
        scores = self.scorer.score_images([u.image for u in units])
        for u, s in zip(units, scores, strict=True):
            u.row.score = round(float(s), 6)
            u.row.verdict = self.verdict(float(s))

    def verdict(self, score: float) -> str:
        return "fake" if score >= self.threshold else "real"

    # ------------------------------------------------------------------ files
    def _image_units(self, im, path: str, frame: int | None = None) -> list[_Unit]:
        kind = "frame" if frame is not None else "image"
        if self._cropper is None:
            return [_Unit(im, Row(path, frame=frame, kind=kind))]
        units = []
        for i, (face, crop) in enumerate(self._cropper.crops(im)):
            row = Row(path, face=i, frame=frame, kind="face" if frame is None else "frame")
            if face is not None:
                row.box = tuple(int(round(v)) for v in face.box)
                conf = face.confidence
                row.face_confidence = None if conf is None else round(float(conf), 4)
            units.append(_Unit(crop, row))
        return units

    def prepare_file(self, path: Path, name: str | None = None) -> Prepared:
        """Decode one file and run the face stage: what the model will see, and the rows that
        are already final (errors, "no face"). ``name`` (default: the path) is what rows show;
        the service passes the uploaded file's name and keeps its own private path. Never
        raises for a bad file: the error becomes the file's row."""
        path = Path(path)
        p = str(path) if name is None else name
        try:
            units, rows = self._file_units(path, p)
        except BadInput as e:
            msg = str(e).replace(str(path), p)
            return Prepared(path, p, [], [Row(p, error=msg, kind=_kind(path))], e)
        except Exception as e:  # last resort: one odd file must not end the batch
            units, rows = [], [Row(p, error=f"{p}: {type(e).__name__}: {e}", kind=_kind(path))]
        return Prepared(path, p, units, rows)

    def finish_file(self, prep: Prepared, scores, explain: bool = False) -> list[Row]:
        """The file's rows, given the scores of ``prep.units`` (in order)."""
        for u, s in zip(prep.units, scores, strict=True):
            u.row.score = round(float(s), 6)
            u.row.verdict = self.verdict(float(s))
        if explain and prep.units:
            from .explain import unit_overlays

            for u, ov in zip(prep.units, unit_overlays(self, prep.units), strict=True):
                u.row.extra["overlay"] = ov
        return [*prep.rows, *self._summarise(prep.path, prep.units, prep.name)]

    def _file_units(self, path: Path, p: str) -> tuple[list[_Unit], list[Row]]:
        """Units to score and rows that are already final (errors, no-face notes)."""
        if is_video(path):
            from ..data.video import sample_frames

            units = []
            for idx, _t, frame in sample_frames(path, self.frames):
                units += self._image_units(frame, p, frame=idx)
            if not units:
                raise BadInput(f"{p}: no face found in {self.frames} sampled frames")
            return units, []
        im = load_rgb(path, self._least_side)
        units = self._image_units(im, p)
        if not units:
            return [], [
                Row(
                    p,
                    error=f"{p}: no face found (use --faces never to score the whole image)",
                    kind="image",
                )
            ]
        return units, []

    def predict(self, paths, explain_dir: str | Path | None = None):
        """Yield rows, file by file, in input order. Folders are searched recursively.

        A pipeline: ``workers`` threads decode files, run the face stage and make the model's
        input tensors ahead of the scorer (decoding, resizing, the detectors and the network
        all release the GIL), at most ``4 * batch_size`` files ahead; a batch is formed from
        the files that are ready in order, so neither the cores nor the model wait. Where the
        backend gains from calls in flight at once (``concurrency``: OpenVINO's two streams),
        that many batches are scored at a time on their own threads. While the generator is
        open, OpenCV (and torch, when an export scores) run on one thread each, process-wide."""
        files = list_files(paths)
        if not files:
            raise FakescopeError("no input files found")
        bar = tqdm(total=len(files), desc="predicting", unit="file", disable=not self.progress)
        pool = ThreadPoolExecutor(self.workers, "prepare") if self.workers else _Inline()
        inflight = self.scorer.concurrency if self.workers else 1
        scoring = ThreadPoolExecutor(inflight, "score") if inflight > 1 else _Inline()
        cores = torch.get_num_threads() if self.workers else 1  # before worker_threads cuts it
        with pool, scoring, self.worker_threads(explain=explain_dir is not None):
            ahead, scored = deque(), deque()
            todo = iter(files)
            window = 4 * max(1, self.batch_size)

            def fill():
                while len(ahead) < window:
                    f = next(todo, None)
                    if f is None:
                        return
                    ahead.append(pool.submit(self._prepare_tensors, f))

            def finish(preps, scores):
                scores = iter(scores)
                for prep in preps:
                    rows = self.finish_file(prep, [next(scores) for _ in prep.units])
                    if explain_dir is not None and prep.units:
                        from ..scoring.explain import write_overlays

                        write_overlays(self, prep.units, Path(explain_dir))  # row.explanation
                    yield from rows
                bar.update(len(preps))

            # Scored batches in input order, some of whose scores may still wait for the run's
            # network to confirm them (an export's, near the threshold: Scorer.score_later).
            # The network confirms on the scoring threads, as the export scores there, while
            # this thread goes on feeding them: confirming here stalled the pipeline (0.94x).
            waiting, confirming = deque(), None  # the confirmation running, if any

            def ready():
                while waiting and waiting[0][1].ready:
                    done, later = waiting.popleft()
                    yield from finish(done, later.scores())

            def settled(last: bool = False):
                nonlocal confirming
                yield from ready()
                if not waiting:
                    return
                far_behind = len(waiting) > 2 * MAX_WAITING
                if confirming is not None and (confirming.done() or last or far_behind):
                    confirming.result()  # raises what the network raised
                    confirming = None
                if confirming is None:
                    force = last or len(waiting) > MAX_WAITING
                    # the last runs alone: on every core, split by images
                    threads = cores if last else 1
                    confirming = scoring.submit(self.scorer.confirm_waiting, force, threads)
                if last:
                    confirming.result()  # forced: every image still waiting is confirmed
                    yield from ready()
                    if waiting:  # never lose rows silently
                        raise RuntimeError(f"{len(waiting)} batches' scores were never confirmed")

            fill()
            while ahead:
                preps = [ahead.popleft().result()]
                while ahead and sum(len(p.units) for p in preps) < self.batch_size:
                    preps.append(ahead.popleft().result())
                fill()  # the workers go on while this batch is scored
                scored.append((preps, scoring.submit(self._score_prepared, preps)))
                while len(scored) >= inflight:
                    done, future = scored.popleft()
                    waiting.append((done, future.result()))
                    yield from settled()
            while scored:
                done, future = scored.popleft()
                waiting.append((done, future.result()))
            yield from settled(last=True)
        bar.close()

    def worker_threads(self, explain: bool = False) -> ExitStack:
        """The library thread pools cut to one thread while ``predict``'s workers run, since
        each worker already takes one file: OpenCV's when the face stage is on, torch's when an
        export scores (torch then only makes input tensors; with ``explain`` Grad-CAM runs the
        network in torch). Process-wide settings, put back when the context ends."""
        threads = ExitStack()
        if self._cropper is not None and self.workers > 1:
            from ..data.faces import one_opencv_thread

            threads.enter_context(one_opencv_thread())
        if self.workers and self.scorer.runtime is None and not explain:
            from ..model.runtime import one_torch_thread

            threads.enter_context(one_torch_thread())
        return threads

    def _prepare_tensors(self, path: Path) -> Prepared:
        prep = self.prepare_file(path)
        if prep.units:
            prep.tensors = self.scorer.tensors([u.image for u in prep.units])
        return prep

    def _score_prepared(self, preps: list[Prepared]) -> Later:
        xs = [p.tensors for p in preps if p.units]
        return self.scorer.score_later(torch.cat(xs)) if xs else Later([])

    def _summarise(self, f: Path, units: list[_Unit], name: str):
        rows = [u.row for u in units]
        if not is_video(f) or not rows:
            yield from rows
            return
        by_frame: dict[int, float] = {}
        for r in rows:
            by_frame[r.frame] = max(by_frame.get(r.frame, 0.0), r.score)
        score = video_score(list(by_frame.values()))
        yield Row(
            name,
            score=round(score, 6),
            verdict=self.verdict(score),
            kind="video",
            extra={"frames_scored": len(by_frame)},
        )
        yield from rows
