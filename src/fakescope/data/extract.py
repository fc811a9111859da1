"""Preparing a training folder from photos and videos: every face becomes a crop in the
``real/`` / ``fake/<generator>/`` layout, with a manifest of where each crop came from.

FaceForensics++ and Celeb-DF are prepared one folder at a time, e.g.::

    fakescope faces extract FF++/original_sequences/youtube/c23/videos ffpp --label real
    fakescope faces extract FF++/manipulated_sequences/Deepfakes/c23/videos ffpp \
        --label fake --generator deepfakes

Crops are saved as PNG so that extraction adds no compression trace of its own.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm.auto import tqdm

from ..config import DEFAULT_FACE_MARGIN
from ..errors import BadInput, FakescopeError
from .images import is_video, list_files, load_rgb

MANIFEST_FIELDS = ["crop", "label", "source", "frame", "face", "x1", "y1", "x2", "y2", "confidence"]


def _label_and_rest(src: Path, f: Path, label: str | None) -> tuple[str, Path]:
    rel = f.relative_to(src) if f.is_relative_to(src) else Path(f.name)
    if label:
        return label, rel
    if rel.parts and rel.parts[0] in ("real", "fake"):
        return rel.parts[0], Path(*rel.parts[1:])
    raise BadInput(f"{f}: cannot tell real from fake (not under real/ or fake/; pass --label)")


def extract_faces(
    src,
    dst,
    label: str | None = None,
    generator: str | None = None,
    margin: float = DEFAULT_FACE_MARGIN,
    align: bool = False,
    frames: int = 16,
    max_faces: int = 10,
    cropper=None,
    progress: bool = True,
) -> dict:
    """Crop every face of every image/video under ``src`` into ``dst``; returns counts and the
    errors (one line per bad file). Appends to an existing ``dst/manifest.csv``."""
    from ..data.faces import FaceCropper

    if label not in (None, "real", "fake"):
        raise FakescopeError("--label must be real or fake")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FakescopeError(f"{src}: no such file or folder")
    cropper = cropper or FaceCropper(mode="always", margin=margin, align=align)
    files = list_files([src])
    manifest = dst / "manifest.csv"
    dst.mkdir(parents=True, exist_ok=True)
    new = not manifest.exists()
    counts = {"files": len(files), "crops": 0, "no_face": 0, "failed": 0}
    errors = []
    with open(manifest, "a", newline="") as fh:
        w = csv.DictWriter(fh, MANIFEST_FIELDS)
        if new:
            w.writeheader()
        for f in tqdm(files, desc="extracting faces", unit="file", disable=not progress):
            try:
                lab, rest = _label_and_rest(src, f, label)
                sub = dst / lab
                if lab == "fake" and generator:
                    sub = sub / generator
                sub = sub / rest.parent
                if is_video(f):
                    from ..data.video import sample_frames

                    images = [(idx, im) for idx, _t, im in sample_frames(f, frames)]
                else:
                    images = [(None, load_rgb(f))]
                n_before = counts["crops"]
                for idx, im in images:
                    faces = cropper.crops(im)[:max_faces]
                    for i, (face, crop) in enumerate(faces):
                        stem = rest.stem + (f"_f{idx:06d}" if idx is not None else "") + f"_{i}"
                        out = sub / f"{stem}.png"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        crop.save(out)
                        box = face.box if face is not None else (None,) * 4
                        w.writerow(
                            {
                                "crop": out.relative_to(dst).as_posix(),
                                "label": lab,
                                "source": str(f),
                                "frame": idx,
                                "face": i,
                                "x1": box[0],
                                "y1": box[1],
                                "x2": box[2],
                                "y2": box[3],
                                "confidence": getattr(face, "confidence", None),
                            }
                        )
                        counts["crops"] += 1
                fh.flush()
                if counts["crops"] == n_before:
                    counts["no_face"] += 1
                    errors.append(f"{f}: no face found")
            except BadInput as e:
                counts["failed"] += 1
                errors.append(str(e))
    return {**counts, "errors": errors, "manifest": str(manifest)}
