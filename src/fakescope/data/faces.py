"""The face stage: find faces, and cut the crops the classifier sees.

The detector sits behind ``FaceDetector`` so another one can be swapped in; ``MTCNNDetector``
(facenet-pytorch) is the default. ``FaceCropper`` turns one image into the crops to score, and
gives training the very same crop (``training_crop``) so training and prediction agree.
See docs/faces.md for how the "auto" rule was measured.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from ..config import DEFAULT_FACE_MARGIN
from ..errors import FakescopeError
from ..model.runtime import threads_cut

FACE_MODES = ("auto", "always", "never")

# "auto" scores the whole image when it already is a face crop: some face spans at least
# TIGHT_MIN_RATIO of the image's short side and its box centre lies within TIGHT_MAX_OFFSET (as a
# fraction of width/height) of the image centre. Other, off-centre faces are allowed: LFW crops
# often show a bystander at the edge. Measured numbers are in docs/faces.md.
TIGHT_MIN_RATIO = 0.25
TIGHT_MAX_OFFSET = 0.25
# The quick test's own, safer bounds (QuickTightTest): its boxes are Haar's or LBP's, larger than
# MTCNN's, and a box centred just inside the rule's offset can be MTCNN's just outside it.
QUICK_MIN_RATIO = 0.4
QUICK_MAX_OFFSET = 0.2
# MTCNN's first, big-face-only pass in "auto" (FaceCropper.crops): its boxes come from a coarser
# pyramid than the whole search's, a few pixels off them; a face within a few pixels of the
# rule's size bound (the middle of three in a row) came out a crop there and not in the whole
# search, so this pass answers only for faces well over the bound, and the rest are searched
# whole (docs/faces.md)
BIG_FACE_MIN_RATIO = 0.3

# OpenCV's pip wheels ship only the Haar cascades; its LBP cascades come with the system's
# OpenCV data (Debian's and Ubuntu's opencv-data, Homebrew's opencv).
LBP_CASCADE = "lbpcascade_frontalface.xml"
LBP_CASCADE_DIRS = (
    "/usr/share/opencv4/lbpcascades",
    "/usr/share/opencv/lbpcascades",
    "/usr/local/share/opencv4/lbpcascades",
    "/opt/homebrew/share/opencv4/lbpcascades",
)
LBP_CASCADE_ENV = "FAKESCOPE_LBP_CASCADE"


def lbp_cascade_file() -> str | None:
    """The LBP frontal-face cascade the quick test asks first: the file named by
    $FAKESCOPE_LBP_CASCADE (set but empty: none), else the first one installed, else None."""
    named = os.environ.get(LBP_CASCADE_ENV)
    if named is not None:
        return named or None
    for d in LBP_CASCADE_DIRS:
        path = os.path.join(d, LBP_CASCADE)
        if os.path.isfile(path):
            return path
    return None


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the image given
    confidence: float | None  # None: found by the quick test, which gives no probability
    # MTCNN's five points: left eye, right eye, nose, mouth left, mouth right (image's left/right)
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class FaceDetector(Protocol):
    name: str

    def detect(self, im: Image.Image, min_face: int | None = None) -> list[Face]: ...


class MTCNNDetector:
    """facenet-pytorch's MTCNN on the CPU; never raises on an odd image, returns [] instead."""

    name = "mtcnn"

    def __init__(
        self,
        threshold: float = 0.9,
        min_face_size: int = 20,
        max_faces: int = 100,
        max_side: int = 1600,
    ):
        self.threshold = threshold
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.max_side = max_side
        self._net = None

    def _model(self):
        # Loading is deferred so that importing fakescope (and "--faces never") costs nothing.
        if self._net is None:
            import torch
            from facenet_pytorch import MTCNN

            net = MTCNN(
                keep_all=True,
                device="cpu",
                min_face_size=self.min_face_size,
                select_largest=False,
            )
            # channels_last weights make every convolution's output channels_last, and torch's
            # CPU max-pooling with ceil_mode (all of MTCNN's) is ~10x faster in that layout:
            # the detector 1.4-1.7x faster, boxes and probabilities equal to 1e-4
            # (docs/faces.md)
            self._net = net.to(memory_format=torch.channels_last)
        return self._net

    def detect(self, im: Image.Image, min_face: int | None = None) -> list[Face]:
        """Faces in ``im``, most confident first; ``min_face``: the smallest face side looked
        for in this call (default: the detector's), in pixels of ``im``."""
        import torch

        if im.mode != "RGB":
            im = im.convert("RGB")
        scale = 1.0
        if max(im.size) > self.max_side:
            # The pyramid on a 6000 px photo takes minutes and gigabytes; faces small enough to
            # vanish at 1600 px are too small to judge anyway.
            scale = self.max_side / max(im.size)
            small = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(small, Image.BILINEAR)
        # MTCNN's first network sees 12 px; the detector's own bound counts in pixels of the
        # image it searches, a caller's in pixels of the image given. No face fits in an image
        # narrower than that; MTCNN's pyramid is empty then and it raises instead of saying so.
        least = max(12, self.min_face_size if min_face is None else round(min_face * scale))
        if min(im.size) < least:
            return []
        from facenet_pytorch.models.utils.detect_face import detect_face

        net = self._model()
        try:
            # facenet's own detect() with the pyramid's smallest face as an argument, not as
            # the shared model's attribute: the face stage's worker threads share one model
            with torch.no_grad():
                boxes, points = detect_face(
                    im, least, net.pnet, net.rnet, net.onet, net.thresholds, net.factor, net.device
                )
        except (RuntimeError, ValueError, IndexError, TypeError):
            # Degenerate inputs (slivers, flat images) can break its internals; "no face" is the
            # honest answer and the caller reports it.
            return []
        faces = []
        for box, pts in zip(np.asarray(boxes[0]).reshape(-1, 5), points[0], strict=False):
            if float(box[4]) < self.threshold:
                continue
            b = tuple(float(v) / scale for v in box[:4])
            lm = tuple((float(x) / scale, float(y) / scale) for x, y in pts)
            faces.append(Face(box=b, confidence=float(box[4]), landmarks=lm))
        faces.sort(key=lambda f: f.confidence, reverse=True)
        return faces[: self.max_faces]


def crop_face(
    im: Image.Image, face: Face, margin: float = DEFAULT_FACE_MARGIN, align: bool = False
) -> Image.Image:
    """Square crop of side ``margin * max(box w, box h)`` centred on the box centre (moved
    just enough to stay inside the image when it fits).

    Parts of the square outside the image are filled by edge replication, not black: a black
    band is a strong, content-free edge the classifier could learn instead of the face. With
    ``align`` (and landmarks), the square is rotated with the eye line, which is the same as
    rotating the image about the eye midpoint until the eyes are level and then cropping.
    """
    x1, y1, x2, y2 = face.box
    side = max(1, round(margin * max(x2 - x1, y2 - y1)))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    angle = 0.0
    if align and face.landmarks is not None and len(face.landmarks) >= 2:
        (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
        angle = math.atan2(ry - ly, rx - lx)
    if angle == 0.0:
        # Integer offset + nearest neighbour copies pixels exactly: no resampling blur to wipe
        # out the high-frequency traces a deepfake detector relies on.
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        # Slide the square back inside the image where it fits: real pixels beat replicated
        # edges, and a face that fills its photo then gets the framing the photo had.
        w, h = im.size
        if side <= w:
            x0 = min(max(x0, 0), w - side)
        if side <= h:
            y0 = min(max(y0, 0), h - side)
        m = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]])
        flags = cv2.INTER_NEAREST
    else:
        # Output pixel d (from the crop centre) samples the original at centre + R(angle) d,
        # pixel centres at integer coordinates (box coordinates put them at +0.5).
        c, s = math.cos(angle), math.sin(angle)
        h = (side - 1) / 2
        px, py = cx - 0.5, cy - 0.5
        m = np.array([[c, -s, px - c * h + s * h], [s, c, py - s * h - c * h]])
        flags = cv2.INTER_LINEAR
    out = cv2.warpAffine(
        arr,
        m,
        (side, side),
        flags=flags | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return Image.fromarray(out)


def one_opencv_thread():
    """OpenCV's own thread pool cut to one thread for the duration. The prediction pipeline
    already runs one file per worker thread; OpenCV splitting each small detection across the
    cores again only made the threads contend (9 % fewer images/s end to end on 2 cores,
    docs/benchmarks.md). The setting is process-wide, so it is put back afterwards."""
    return threads_cut(cv2.getNumThreads, cv2.setNumThreads)


class QuickTightTest:
    """A cheap first answer to "auto"'s question, is this image already a face crop: OpenCV's
    frontal-face cascades on the image shrunk to 128 px, looking only for faces as big as the
    rule needs. Passes in turn, the fastest first; each looks only where the ones before found
    nothing (a tilted face, odd light), never where one found something that is not a crop.
    Where none finds such a face (profiles, several faces) MTCNN decides as before.

    The first pass is OpenCV's LBP cascade where one is installed (``lbp``: True finds one,
    False goes without, a path names the file): it answers nearly nine in ten face crops in a
    quarter of the first Haar pass's time, and the Haar passes then look only at the rest. With or
    without it, of ../shared's 5,198 face crops the passes answer about 5,150 and leave about 50
    to MTCNN (docs/faces.md)."""

    SIDE = 128
    # (file, pyramid step, neighbours): of the settings tried (docs/faces.md), the least time
    # in all once the images all miss have gone on to MTCNN. The last, a finer pyramid with
    # fewer neighbours, runs on the 3 % the first two find nothing in, and answers two thirds
    # of those for a twentieth of MTCNN's time.
    CASCADES = (
        ("haarcascade_frontalface_alt2.xml", 1.3, 3),
        ("haarcascade_frontalface_default.xml", 1.2, 4),
        ("haarcascade_frontalface_alt2.xml", 1.1, 2),
    )
    # The LBP pass's (pyramid step, neighbours): with 4 neighbours, of 400 composed non-crops
    # it called about as many crops as the Haar passes alone did (16 against 15); 2 or 3, more.
    LBP = (1.2, 4)

    def __init__(self, lbp: bool | str = True):
        self.lbp = lbp_cascade_file() if lbp is True else (lbp or None)
        if self.lbp is not None:
            # a missing file is told apart first: OpenCV would log its own error line for it;
            # a malformed one raises from inside OpenCV or loads empty
            if not os.path.isfile(self.lbp):
                raise FakescopeError(f"{self.lbp}: not a cascade file OpenCV can load (no file)")
            try:
                empty = cv2.CascadeClassifier(self.lbp).empty()
            except (cv2.error, SystemError):
                empty = True
            if empty:
                raise FakescopeError(f"{self.lbp}: not a cascade file OpenCV can load")
        self._local = threading.local()  # cascades per thread: OpenCV's are not shareable

    def describe(self) -> str:
        return ("LBP, then " if self.lbp else "") + "Haar cascades"

    def _cascades(self) -> list:
        found = getattr(self._local, "cascades", None)
        if found is None:
            passes = [(cv2.data.haarcascades + f, step, n) for f, step, n in self.CASCADES]
            if self.lbp:
                passes.insert(0, (self.lbp, *self.LBP))
            found = self._local.cascades = [
                (cv2.CascadeClassifier(f), step, n) for f, step, n in passes
            ]
        return found

    def tight_face(self, im: Image.Image) -> Face | None:
        scale = self.SIDE / min(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        # A big photo is first shrunk by a whole factor (a box filter inside Pillow): converting
        # and resizing all 12 MP of a phone photo took 40 of the test's 50 ms. Images under
        # 6x SIDE, the face crops this test is for, take the same path as before.
        k = min(im.size) // (3 * self.SIDE)
        small = im.reduce(k) if k >= 2 else im
        grey = small.convert("L")
        # Shrunk by a whole factor first where that keeps SIDE (a 256 px crop: to 128 exactly):
        # Pillow's reduce is a third of its bilinear resize's time, and of ../shared's 5,200
        # images and 400 composed non-crops it answered as many (docs/faces.md, session 37)
        r = min(grey.size) // self.SIDE
        grey = grey.reduce(r) if r >= 2 else grey
        grey = np.asarray(grey if grey.size == size else grey.resize(size, Image.BILINEAR))
        # Only faces over the quick test's own size bound are looked for: the smaller scales
        # were two thirds of the time, and a face under the bound sends the image to MTCNN
        # whether it is found or not.
        least = int(QUICK_MIN_RATIO * self.SIDE)
        for cascade, step, neighbours in self._cascades():
            boxes = cascade.detectMultiScale(
                grey, scaleFactor=step, minNeighbors=neighbours, minSize=(least, least)
            )
            if len(boxes):
                return self._judge(boxes, grey.shape, scale)
        return None

    def _judge(self, boxes, shape, scale: float) -> Face | None:
        # Stricter than the rule it stands in for, since its boxes are not MTCNN's: exactly one
        # big face, well over the size bound, well inside the offset bound. Anything else (a
        # group photo whose faces straddle the bound, a face on the edge of the offset bound, a
        # neighbour at the edge) goes on to MTCNN.
        if len(boxes) != 1:
            return None
        x, y, bw, bh = (int(v) for v in boxes[0])
        h, w = shape
        off = max(abs((x + bw / 2) / w - 0.5), abs((y + bh / 2) / h - 0.5))
        if min(bw, bh) < QUICK_MIN_RATIO * self.SIDE or off > QUICK_MAX_OFFSET:
            return None
        return Face(box=tuple(float(v) / scale for v in (x, y, x + bw, y + bh)), confidence=None)


class FaceCropper:
    """Turns an image into the (face, crop) pairs to score.

    mode "never": the whole image. "always": one crop per detected face at least ``min_face`` px
    on its short side. "auto": the whole image when it already is a face crop (a big, central
    face: see TIGHT_MIN_RATIO), else as "always". With "always" and "auto" an image without a
    face gives [], so the caller can say "no face found" rather than score background.
    """

    def __init__(
        self,
        mode: str = "auto",
        margin: float = DEFAULT_FACE_MARGIN,
        align: bool = False,
        detector: FaceDetector | None = None,
        min_face: int = 20,
        max_faces: int = 100,
        quick_test: bool = True,
    ):
        if mode not in FACE_MODES:
            raise FakescopeError(f"face mode must be one of {', '.join(FACE_MODES)}, not {mode!r}")
        if margin <= 0:
            raise FakescopeError(f"face margin must be positive, not {margin}")
        self.mode = mode
        self.margin = margin
        self.align = align
        self.min_face = min_face
        self.max_faces = max_faces
        self._detector = detector
        self._quick = QuickTightTest() if quick_test and mode == "auto" else None
        self._cache: dict[str, Face | None] = {}

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            # MTCNN's pyramid cannot look below 12 px; finding faces smaller than min_face
            # would only have them filtered out again.
            self._detector = MTCNNDetector(
                min_face_size=max(12, self.min_face), max_faces=self.max_faces
            )
        return self._detector

    def faces(self, im: Image.Image, min_face: int | None = None) -> list[Face]:
        """Detected faces, most confident first; ``min_face``: only faces this big or bigger
        are looked for (default: the detector's own bound)."""
        found = self.detector.detect(im, min_face)
        return sorted(found, key=lambda f: f.confidence, reverse=True)

    def tight_face(
        self,
        im: Image.Image,
        faces: list[Face],
        min_ratio: float = TIGHT_MIN_RATIO,
        max_offset: float = TIGHT_MAX_OFFSET,
    ) -> Face | None:
        """The face ``im`` is a tight crop of (big and central), or None. Of several candidates
        the most central wins: in LFW a neighbour's face can be as big and more confident."""
        short = min(im.size)
        best, best_off = None, max_offset
        for f in faces:
            off = max(
                abs((f.box[0] + f.box[2]) / 2 / im.width - 0.5),
                abs((f.box[1] + f.box[3]) / 2 / im.height - 0.5),
            )
            if min(f.width, f.height) >= min_ratio * short and off <= best_off:
                best, best_off = f, off
        return best

    def crops(self, im: Image.Image) -> list[tuple[Face | None, Image.Image]]:
        if self.mode == "never":
            return [(None, im)]
        quick = self._quick.tight_face(im) if self._quick else None
        if quick is not None:
            return [(quick, im)]
        if self.mode == "auto":
            # MTCNN looks first only for a face big enough to make the image a crop: most
            # images the quick test leaves in a folder of crops are crops, and a pyramid that
            # starts there costs half of the whole one (docs/faces.md)
            big = math.floor(BIG_FACE_MIN_RATIO * min(im.size))
            if big > self.min_face:
                found = self.faces(im, big)
                tight = self.tight_face(im, found, BIG_FACE_MIN_RATIO, QUICK_MAX_OFFSET)
                if tight is not None:
                    return [(tight, im)]
        faces = self.faces(im)
        tight = self.tight_face(im, faces) if self.mode == "auto" else None
        if tight is not None:
            return [(tight, im)]
        # Small faces go before the cap, so that they cannot take the places of bigger ones.
        keep = [f for f in faces if min(f.width, f.height) >= self.min_face][: self.max_faces]
        return [(f, crop_face(im, f, self.margin, self.align)) for f in keep]

    def training_crop(self, im: Image.Image, path) -> Image.Image:
        """The crop prediction would score first (most confident face), or the whole image when
        no face is found: a missed detection must not drop a training image. The decision is
        remembered per ``path``; None (streamed shards) remembers nothing, so that memory does
        not grow with the data."""
        if path is None:
            found = self.crops(im)
            return found[0][1] if found else im
        key = str(path)
        if key not in self._cache:
            found = self.crops(im)
            face, crop = found[0] if found else (None, im)
            # Only the decision is kept (a Face, or None for "whole image"): caching the crops
            # themselves would hold a whole data set of pixels in memory, and re-cropping is cheap.
            self._cache[key] = None if crop is im else face
            return crop
        face = self._cache[key]
        return im if face is None else crop_face(im, face, self.margin, self.align)

    def describe(self) -> dict:
        name = getattr(self._detector, "name", None) or MTCNNDetector.name
        out = {"mode": self.mode, "margin": self.margin, "align": self.align, "detector": name}
        if self._quick is not None:
            out["quick_test"] = self._quick.describe()
        return out


def framing_margin(images, cropper: FaceCropper | None = None) -> float | None:
    """How loosely the given face images are framed: the median of (image short side / face box
    long side). Used as the crop margin at prediction time, so that a face cut from a group
    photo is framed like the images the model was trained on. None when no face is found."""
    cropper = cropper or FaceCropper(mode="auto")
    ratios = []
    for im in images:
        faces = cropper.faces(im)
        face = cropper.tight_face(im, faces) or (faces[0] if faces else None)
        if face is not None:
            ratios.append(min(im.size) / max(face.width, face.height, 1.0))
    return float(np.median(ratios)) if ratios else None
