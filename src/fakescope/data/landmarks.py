"""Facial landmarks for Self-Blended Images (``sbi.py``), behind a small pluggable protocol.

Two sources:

``Dlib68``
    dlib's frontal face detector and its 68-point shape predictor. dlib comes from the PyPI
    wheel ``dlib-bin`` (no compiler needed); the predictor file
    ``shape_predictor_68_face_landmarks.dat`` ships in the PyPI package
    ``face-recognition-models``. **Licence caveat:** that predictor was trained on the iBUG 300-W
    data set, whose licence excludes commercial use; at the data set creators' request the
    dlib-models README says the trained model can't be used in a commercial product (whatever
    the MIT/CC0 labels on the PyPI package say). Research use is fine; a commercial product
    needs another landmark model (or ``Mtcnn5``).

``Mtcnn5``
    facenet-pytorch's MTCNN (already a fakescope dependency). Its five points (eyes, nose tip,
    mouth corners) are mapped onto a mean face outline, so it returns 27 points in the order of
    dlib's points 0-26 (jaw line, then eyebrows). Coarser than dlib -- no real jaw line -- but
    the convex hull, which is all SBI uses, comes out close (median IoU 0.83 with dlib's on
    sample faces). Far slower on CPU: 0.15-0.7 s per 250 px face, against dlib's 10 ms.

``landmark_source("auto")`` picks dlib when it and its predictor file are installed, MTCNN
otherwise. ``LandmarkCache`` computes landmarks once per image and keeps them in one .npz file.

All landmark arrays are float32 ``(K, 2)`` of ``(x, y)`` in pixels of the image given.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import FakescopeError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# Mean face in a frame where the eye centres sit at (-0.5, 0) and (0.5, 0) (y down), measured by
# running MTCNN and dlib on the same 240 real training faces (120 sg-ffhq, 120 lfw-faceswap),
# taking per-point medians and mirroring left/right. MTCNN's five points in that frame:
MTCNN_TEMPLATE = np.array(
    [[-0.5, 0.0], [0.5, 0.0], [0.0, 0.61], [-0.445, 1.08], [0.445, 1.08]], dtype=np.float64
)
# ... and dlib's points 0-16 (jaw, image-left to image-right) and 17-26 (eyebrows) in that frame.
_JAW_HALF = [
    (1.13, 0.04), (1.12, 0.33), (1.085, 0.62), (1.03, 0.915), (0.93, 1.195), (0.76, 1.44),
    (0.545, 1.65), (0.285, 1.805),
]  # fmt: skip
_BROW_HALF = [(0.91, -0.17), (0.77, -0.305), (0.575, -0.345), (0.37, -0.315), (0.18, -0.245)]
OUTLINE_TEMPLATE = np.array(
    [(-x, y) for x, y in _JAW_HALF]
    + [(0.0, 1.86)]
    + [(x, y) for x, y in reversed(_JAW_HALF)]
    + [(-x, y) for x, y in _BROW_HALF]
    + [(x, y) for x, y in reversed(_BROW_HALF)],
    dtype=np.float64,
)


@runtime_checkable
class LandmarkSource(Protocol):
    """Anything that gives landmarks for the main face of an image.

    ``name`` is recorded in caches, so that landmarks of different kinds are never mixed.
    ``landmarks`` always answers (a source falls back to a guess when it finds no face, since
    the images SBI is fed are face crops) and never returns fewer than 3 points.
    """

    name: str

    def landmarks(self, im: Image.Image) -> np.ndarray: ...


def _main_box(boxes: list[tuple[float, float, float, float]], size: tuple[int, int]) -> int:
    """Index of the face a crop was made of: of the faces at least half as big as the biggest,
    the most central. LFW crops often hold a bystander who can be detected first. Areas count
    inside the image only: MTCNN sometimes reports a huge box mostly off the image."""
    w, h = size
    areas = [
        max(0.0, min(x2, w) - max(x1, 0)) * max(0.0, min(y2, h) - max(y1, 0))
        for x1, y1, x2, y2 in boxes
    ]
    big = [i for i, a in enumerate(areas) if a >= 0.5 * max(areas)]

    def offset(i):
        x1, y1, x2, y2 = boxes[i]
        return ((x1 + x2) / 2 / w - 0.5) ** 2 + ((y1 + y2) / 2 / h - 0.5) ** 2

    return min(big, key=offset)


def _rgb_array(im: Image.Image) -> np.ndarray:
    # dlib wants a C-contiguous uint8 HxWx3 array and rejects read-only views of odd layout.
    return np.ascontiguousarray(np.asarray(im if im.mode == "RGB" else im.convert("RGB")))


def predictor_path() -> Path:
    """Where ``face-recognition-models`` put dlib's 68-point predictor.

    Its own ``pose_predictor_model_location()`` imports ``pkg_resources``, which setuptools
    >= 81 no longer provides, so the file is found from the package's location without
    importing it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FakescopeError(
            "dlib's 68-point predictor is missing: pip install face-recognition-models"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FakescopeError(f"dlib's 68-point predictor is missing: no file {path}")
    return path


@functools.cache
def _dlib_models(path: str):
    """dlib's detector and predictor, loaded once per process: loading the predictor takes about
    a second, and every source in a process can share the read-only models."""
    try:
        import dlib
    except ImportError:
        raise FakescopeError("dlib is not installed: pip install dlib-bin") from None
    if not Path(path).is_file():
        raise FakescopeError(f"dlib's 68-point predictor is missing: no file {path}")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


class Dlib68:
    """dlib's 68 points (iBUG 300-W layout) of the main face.

    The face box comes from dlib's HOG detector, retried once on a 2x upsampled image; when it
    still finds nothing, the whole image is taken as the face box, as the inputs are face crops
    already (``fallbacks`` counts how often that happened). Licence: see the module docstring;
    the predictor is not for commercial use.
    """

    name = "dlib68"

    def __init__(self, predictor: str | Path | None = None):
        self.predictor = str(predictor) if predictor is not None else None
        self.fallbacks = 0
        self._detector = None
        self._shape = None

    def _models(self):
        # Loading is deferred (the predictor is a 100 MB file) and redone after unpickling:
        # dlib objects cannot be pickled into DataLoader workers.
        if self._shape is None:
            self._detector, self._shape = _dlib_models(self.predictor or str(predictor_path()))
        return self._detector, self._shape

    def __getstate__(self):
        return {**self.__dict__, "_detector": None, "_shape": None}

    def landmarks(self, im: Image.Image) -> np.ndarray:
        detector, shape = self._models()  # first: says what to install when dlib is missing
        import dlib

        arr = _rgb_array(im)
        h, w = arr.shape[:2]
        rects = detector(arr, 0)
        if len(rects) == 0:
            rects = detector(arr, 1)
        if len(rects) == 0:
            self.fallbacks += 1
            rect = dlib.rectangle(0, 0, w - 1, h - 1)
        else:
            boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
            rect = rects[_main_box(boxes, (w, h))]
        parts = shape(arr, rect).parts()
        return np.array([(p.x, p.y) for p in parts], dtype=np.float32)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) taking src onto dst, as a 2x3
    matrix (Umeyama's closed form). Closed form rather than cv2's RANSAC estimators: no
    randomness, and five points leave nothing to reject."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip) / (s**2).sum(1).mean())
    m = scale * rot
    return np.hstack([m, (mu_d - m @ mu_s)[:, None]])


class Mtcnn5:
    """MTCNN's five points, mapped onto a mean face outline: 27 points in dlib's order 0-26.

    ``scale`` grows the outline about the face centre (1.0 is the measured mean face). When
    MTCNN finds no face the outline is stretched over the whole image (``fallbacks`` counts
    those), as ``Dlib68`` does.
    """

    name = "mtcnn5"

    def __init__(self, threshold: float = 0.9, scale: float = 1.0):
        self.threshold = threshold
        self.scale = scale
        self.fallbacks = 0
        self._detector = None

    def _model(self):
        if self._detector is None:
            if importlib.util.find_spec("facenet_pytorch") is None:
                raise FakescopeError(
                    "facenet-pytorch is not installed: pip install --no-deps facenet-pytorch"
                )
            from .faces import MTCNNDetector

            self._detector = MTCNNDetector(threshold=self.threshold)
        return self._detector

    def __getstate__(self):
        return {**self.__dict__, "_detector": None}

    def polygon(self, five: np.ndarray) -> np.ndarray:
        """The outline for five points (left eye, right eye, nose, mouth left, mouth right)."""
        outline = OUTLINE_TEMPLATE
        if self.scale != 1.0:
            centre = outline.mean(0)
            outline = centre + (outline - centre) * self.scale
        m = _similarity(MTCNN_TEMPLATE, np.asarray(five, dtype=np.float64))
        return (outline @ m[:, :2].T + m[:, 2]).astype(np.float32)

    def landmarks(self, im: Image.Image) -> np.ndarray:
        faces = [f for f in self._model().detect(im) if f.landmarks is not None]
        if faces:
            face = faces[_main_box([f.box for f in faces], im.size)]
            return self.polygon(np.array(face.landmarks))
        self.fallbacks += 1
        lo, hi = OUTLINE_TEMPLATE.min(0), OUTLINE_TEMPLATE.max(0)
        unit = (OUTLINE_TEMPLATE - lo) / (hi - lo)
        return (unit * [im.width - 1, im.height - 1]).astype(np.float32)


def landmark_source(name: str = "auto") -> LandmarkSource:
    """``"dlib68"``, ``"mtcnn5"``, or ``"auto"``: dlib when it and its predictor file are
    installed, else MTCNN. Raises FakescopeError when the one asked for cannot run."""
    name = name.lower()
    dlib_ok = importlib.util.find_spec("dlib") is not None
    if name == "auto":
        if dlib_ok:
            try:
                return Dlib68(predictor_path())
            except FakescopeError:
                pass
        if importlib.util.find_spec("facenet_pytorch") is not None:
            return Mtcnn5()
        raise FakescopeError(
            "no landmark source available: install dlib-bin and face-recognition-models "
            "(68 points), or facenet-pytorch (MTCNN)"
        )
    if name == Dlib68.name:
        if not dlib_ok:
            raise FakescopeError("dlib is not installed: pip install dlib-bin")
        return Dlib68(predictor_path())
    if name == Mtcnn5.name:
        source = Mtcnn5()
        source._model()  # fail here, with the install hint, rather than at the first image
        return source
    raise FakescopeError(f"landmark source must be auto, dlib68 or mtcnn5, not {name!r}")


class LandmarkCache:
    """Landmarks of the images under ``root``, computed once and kept in one .npz file.

    Keys are the image paths relative to ``root`` (POSIX form), so the cache moves with the data
    set. The file records the source's name; opening it with a different source is an error
    rather than a silent mix of 68-point and 27-point landmarks. Image sizes are stored too, so
    that landmarks can be rescaled to a resized image (``for_size``).

    In training, fill it before the DataLoader starts (``update(paths)``, then ``save()``):
    workers get copies, so what they compute would be lost.
    """

    def __init__(self, path: str | Path, root: str | Path, source: LandmarkSource | None = None):
        self.path = Path(path)
        # abspath, not resolve(): a data root reached through a symlink keeps its keys.
        self.root = Path(os.path.abspath(root))
        self.source = source
        self.source_name = source.name if source is not None else None
        self._points: dict[str, np.ndarray] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._dirty = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                name = str(z["source"])
                keys, points, sizes = z["keys"], z["points"], z["sizes"]
        except (OSError, KeyError, ValueError) as e:
            raise FakescopeError(f"{self.path}: not a landmark cache ({e})") from None
        if self.source_name is not None and name != self.source_name:
            raise FakescopeError(
                f"{self.path} holds {name} landmarks, not {self.source_name}; "
                "delete it or use the same source"
            )
        self.source_name = name
        for k, p, s in zip(keys.tolist(), points, sizes, strict=True):
            self._points[k] = p
            self._sizes[k] = (int(s[0]), int(s[1]))

    def key(self, image_path: str | Path) -> str:
        p = Path(image_path)
        p = Path(os.path.abspath(p if p.is_absolute() else self.root / p))
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            raise FakescopeError(f"{image_path} is not under {self.root}") from None

    def __len__(self) -> int:
        return len(self._points)

    def __contains__(self, image_path) -> bool:
        return self.key(image_path) in self._points

    def get(self, image_path: str | Path, im: Image.Image | None = None) -> np.ndarray:
        """Landmarks of the image (in its own pixel coordinates), computed on first use.
        ``im``, when given, must be that file's pixels; it saves reading the file again."""
        k = self.key(image_path)
        if k not in self._points:
            if self.source is None:
                raise FakescopeError(f"no landmarks cached for {k} and no source to compute them")
            if im is None:
                from .images import load_rgb

                im = load_rgb(self.root / k)
            pts = np.asarray(self.source.landmarks(im), dtype=np.float32)
            if self._points:
                # One (N, K, 2) array on disk needs one K; a source always gives the same K.
                k0 = next(iter(self._points.values())).shape
                if pts.shape != k0:
                    raise FakescopeError(f"{k}: {pts.shape} landmarks, cache holds {k0}")
            self._points[k] = pts
            self._sizes[k] = im.size
            self._dirty = True
        return self._points[k]

    def size(self, image_path: str | Path) -> tuple[int, int]:
        """(width, height) of the image the landmarks were computed on."""
        self.get(image_path)
        return self._sizes[self.key(image_path)]

    def for_size(self, image_path: str | Path, size: tuple[int, int]) -> np.ndarray:
        """Landmarks rescaled to the image resized to ``size`` (width, height)."""
        pts = self.get(image_path)
        w0, h0 = self.size(image_path)
        return (pts * np.array([size[0] / w0, size[1] / h0], dtype=np.float32)).astype(np.float32)

    def update(self, image_paths: Iterable[str | Path], progress: bool = False) -> int:
        """Compute what is missing; returns how many images were new."""
        todo = [p for p in image_paths if p not in self]
        it = todo
        if progress:
            from tqdm import tqdm

            it = tqdm(todo, desc=f"landmarks ({self.source_name})", unit="img")
        for p in it:
            self.get(p)
        return len(todo)

    def save(self) -> None:
        """Write the file (atomically: a crash mid-write leaves the old cache) if anything new
        was computed."""
        if not self._dirty:
            return
        keys = sorted(self._points)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                # A file object, not a name: np.savez would append ".npz" to the temp name.
                np.savez(
                    f,
                    source=np.array(self.source_name),
                    keys=np.array(keys),
                    points=np.stack([self._points[k] for k in keys]).astype(np.float32),
                    sizes=np.array([self._sizes[k] for k in keys], dtype=np.int32),
                )
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False
