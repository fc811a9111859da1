"""Data sets packed into tar shards (the WebDataset format), for data too large to list in memory.

``fakescope shards DIR OUT`` writes ``OUT/{train,val,test}-NNNNNN.tar``. Each sample is three
files under one key: the image's original bytes (never re-encoded: compression traces are part
of what a detector sees), ``json`` (path, label, split, generator) and ``cls`` (0 real, 1 fake),
so any WebDataset reader takes them. ``OUT/shards.json`` lists the shards with their counts and
the fingerprint of the folder they came from; ``OUT/splits.csv`` is that folder's split, so a
run trained on the shards also evaluates on the folder itself.

Training streams the shards (``ShardStream``): memory holds one shard's member list and a
shuffle buffer of references, whatever the data's size. An epoch's order is one stream for all
processes (the shards in a seeded order, through a seeded shuffle buffer) and each process
decodes only its share of each global batch, so a run resumes at any batch with any number of
processes, as it does from a folder (``data/order.py``). The price: every process reads every
shard's 512-byte tar headers, though only its own images.
"""

from __future__ import annotations

import glob
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BadInput, FakescopeError
from .dataset import ImageDataset
from .folders import SPLITS, Sample, fingerprint, load_samples, write_splits
from .images import IMAGE_EXTS, check_file, decode_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD, to_pixels, to_tensor

MANIFEST = "shards.json"
SPLIT_FILE = "splits.csv"
FORMAT = "webdataset"
IMAGE_KEYS = {e.lstrip(".") for e in IMAGE_EXTS}


def is_shards(spec) -> bool:
    """Whether ``spec`` names shards: a folder with shards.json, a .tar file or a glob."""
    s = str(spec)
    return s.endswith(".tar") or any(c in s for c in "*?[") or (Path(s) / MANIFEST).is_file()


@dataclass
class ShardSet:
    """Shards written by ``pack``: their folder, the chosen shards' entries (file, split,
    count, real, fake, bytes) and the manifest."""

    root: Path
    shards: list[dict]
    meta: dict = field(default_factory=dict)

    @classmethod
    def open(cls, spec) -> ShardSet:
        """The shards of a folder (every one its manifest lists), or those a glob or .tar path
        picks from one folder."""
        s = str(spec)
        if (Path(s) / MANIFEST).is_file():
            root, picked = Path(s), None
        else:
            files = sorted(glob.glob(s))
            if not files:
                raise FakescopeError(f"{s}: no shard files match")
            folders = {Path(f).resolve().parent for f in files}
            if len(folders) > 1:
                raise FakescopeError(f"{s}: shards from {len(folders)} folders; pick one folder")
            root, picked = folders.pop(), {Path(f).name for f in files}
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise FakescopeError(
                f"{root}: no {MANIFEST} beside the shards (`fakescope shards` writes it)"
            )
        try:
            meta = json.loads(manifest.read_text())
            listed = meta["shards"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FakescopeError(f"{manifest}: not a shard manifest ({e})") from None
        if meta.get("format") != FORMAT:
            raise FakescopeError(f"{manifest}: format {meta.get('format')!r}, not {FORMAT}")
        if picked is not None:
            unknown = sorted(picked - {d["file"] for d in listed})
            if unknown:
                raise FakescopeError(f"{root / unknown[0]}: not listed in {manifest}")
            listed = [d for d in listed if d["file"] in picked]
        missing = [d["file"] for d in listed if not (root / d["file"]).is_file()]
        if missing:
            raise FakescopeError(
                f"{manifest}: {len(missing)} listed shard(s) not found, e.g. {root / missing[0]}"
            )
        return cls(root.resolve(), listed, meta)

    @property
    def name(self) -> str:
        return self.root.name

    def files(self, split: str) -> list[Path]:
        return [self.root / d["file"] for d in self.shards if d["split"] == split]

    def count(self, split: str, kind: str = "count") -> int:
        """Images of ``split``; ``kind`` "real" or "fake" counts one class."""
        return sum(d[kind] for d in self.shards if d["split"] == split)

    def counts(self) -> dict:
        return {
            f"{split}/{kind}": self.count(split, kind)
            for split in SPLITS
            for kind in ("fake", "real")
            if self.count(split, kind)
        }

    def samples(self, split: str | None) -> list[ShardSample]:
        """Every sample of ``split`` (None: all) with where its image lies: for evaluation,
        which keeps one small record per image, as it keeps one score."""
        out = []
        for d in self.shards:
            if split in (None, d["split"]):
                shard = self.root / d["file"]
                for key, parts in members(shard):
                    info, image = describe(shard, key, parts)
                    out.append(ShardSample(info["path"], int(info["label"]), info["split"],
                                           info["generator"], str(shard), image))  # fmt: skip
        return out


@dataclass(frozen=True)
class ShardSample(Sample):
    shard: str = ""
    image: tuple[int, int] = (0, 0)  # offset and size of the image's bytes in the shard


class ShardSource:
    """A run's training data when it comes from shards (``data.sources.Source``'s part)."""

    real_only = False

    def __init__(self, spec):
        self.shards = ShardSet.open(spec)
        self.root, self.name = self.shards.root, self.shards.name

    def labels(self, split: str) -> set[int]:
        return {k for k, kind in enumerate(("real", "fake")) if self.shards.count(split, kind)}

    def describe(self) -> dict:
        packed = self.shards.meta.get("packed_from", {})
        return {
            # the packed folder's fingerprint: evaluating the run on the folder finds it its own
            "sha256": packed.get("sha256"),
            "counts": self.shards.counts(),
            "root": str(self.root),
            "name": self.name,
            "split_origin": f"shards ({len(self.shards.shards)}), packed from "
            f"{packed.get('root')} ({packed.get('split_origin')})",
            "format": FORMAT,
        }

    def write_split(self, path: Path) -> None:
        path.write_bytes((self.root / SPLIT_FILE).read_bytes())


def members(shard: Path):
    """(key, {extension: (offset, size)}) per sample of a tar shard, in file order, read from
    the tar headers alone (the data is seeked over)."""
    try:
        with tarfile.open(shard, "r:") as tf:
            key, parts = None, {}
            for m in tf:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                k, _, ext = base.partition(".")
                k = m.name[: len(m.name) - len(base)] + k
                if k != key and parts:
                    yield key, parts
                    parts = {}
                key = k
                parts[ext.lower()] = (m.offset_data, m.size)
            if parts:
                yield key, parts
    except (tarfile.TarError, OSError) as e:
        raise FakescopeError(f"{shard}: not a readable tar shard ({e})") from None


def read_part(shard, where: tuple[int, int]) -> bytes:
    with open(shard, "rb") as fh:
        fh.seek(where[0])
        return fh.read(where[1])


def describe(shard, key, parts: dict) -> tuple[dict, tuple[int, int]]:
    """A sample's json and where its image's bytes lie (offset, size)."""
    found = [e for e in parts if e in IMAGE_KEYS]
    if not found or "json" not in parts:
        raise FakescopeError(f"{shard}: sample {key} lacks an image or its json")
    return json.loads(read_part(shard, parts["json"])), parts[found[0]]


def pack(data, out, shard_mb: float = 256, seed: int = 0, progress: bool = True) -> dict:
    """Pack the data folder ``data`` (its splits.csv, else fakescope's seeded 70/15/15 split)
    into shards of about ``shard_mb`` MB per split under ``out``. Unreadable images are left
    out and reported. The manifest is written last: a folder without one is not shards.
    Returns the manifest plus ``errors``."""
    import webdataset as wds
    from tqdm.auto import tqdm

    data, out = Path(data), Path(out)
    samples, origin = load_samples(data, seed=seed)
    if (out / MANIFEST).exists() or list(out.glob("*.tar")):
        raise FakescopeError(f"{out}: already holds shards; pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    entries, packed, errors = [], [], []
    for split in SPLITS:
        chosen = [s for s in samples if s.split == split]
        # one shard holds both classes in random order: a stream's shuffle buffer is local
        random.Random(seed).shuffle(chosen)
        if not chosen:
            continue
        writer = wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxsize=shard_mb * 1e6,
                                 verbose=0)  # fmt: skip
        entry = None
        for n, s in enumerate(tqdm(chosen, desc=f"packing {split}", disable=not progress)):
            path = data / s.path
            try:
                raw = check_file(path, "an image").read_bytes()
                decode_rgb(raw, str(path))  # a file that cannot be read stays out
            except (BadInput, OSError) as e:
                errors.append(str(e) if isinstance(e, BadInput) else f"{path}: {e}")
                continue
            ext = Path(s.path).suffix.lower().lstrip(".")
            info = {"path": s.path, "label": s.label, "split": s.split, "generator": s.source}
            writer.write({"__key__": f"{n:09d}", ext: raw, "json": info, "cls": s.label})
            name = Path(writer.fname).name
            if entry is None or entry["file"] != name:
                entry = {"file": name, "split": split, "count": 0, "real": 0, "fake": 0}
                entries.append(entry)
            entry["count"] += 1
            entry["real" if s.label == 0 else "fake"] += 1
            packed.append(s)
        writer.close()
    if not packed:
        raise FakescopeError(f"{data}: no readable images to pack")
    for e in entries:
        e["bytes"] = (out / e["file"]).stat().st_size
    write_splits(sorted(packed, key=lambda s: s.path), out / SPLIT_FILE)
    manifest = {
        "format": FORMAT,
        "packed_from": {**fingerprint(data, packed), "split_origin": origin},
        "sample": {
            "image": "original bytes, extension as the file's",
            "json": list(info),
            "cls": "0 real, 1 fake",
        },  # fmt: skip
        "shards": entries,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return {**manifest, "errors": errors}


class ShardStream(torch.utils.data.IterableDataset):
    """A split of a ShardSet as (tensor, label, position) items, streamed.

    ``train`` (shuffled): the epoch's stream is cut into global batches of ``batch_size``; this
    process (``rank`` of ``world``) takes every ``world``-th image of each, a DataLoader worker
    the batches its turn falls on, from batch ``start`` on; the last incomplete batch is left
    out so that every process takes as many steps. Otherwise (validation): the shards in order,
    every ``world``-th image, in loader batches of ``batch_size``. ``set_epoch`` has the
    signature of ``data.order.TrainOrder``'s: the stream is its own order."""

    def __init__(self, shards: ShardSet, split: str, batch_size: int, size: int = 299,
                 augment=None, seed: int = 0, prepare=None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, fit: str = "resize", train: bool = True, buffer: int = 2000,
                 rank: int = 0, world: int = 1):  # fmt: skip
        self.files, self.total = shards.files(split), shards.count(split)
        self.name = shards.name
        self.class_counts = {k: shards.count(split, k) for k in ("fake", "real")}
        self.batch_size, self.size, self.augment, self.seed = batch_size, size, augment, seed
        self.prepare, self.mean, self.std, self.fit = prepare, mean, std, fit
        self.pixels = False  # True: uint8 items, as ImageDataset.pixels
        self.train, self.buffer, self.rank, self.world = train, buffer, rank, world
        self.epoch, self.order_seed, self.start = 0, seed, 0

    def set_epoch(self, epoch: int, seed: int = 0, start_batch: int = 0, batch_size: int = 1):
        self.epoch, self.order_seed, self.start = epoch, seed, start_batch

    def counts(self) -> dict:
        """Images per source and class (``data.sources.Split.counts``'s form)."""
        return {f"{self.name}/{k}": n for k, n in self.class_counts.items()}

    def n_batches(self) -> int:
        """Global batches per epoch (training)."""
        return self.total // self.batch_size

    def __len__(self) -> int:
        if self.train:
            return (self.n_batches() - self.start) * (self.batch_size // self.world)
        return len(range(self.rank, self.total, self.world))

    def _stream(self):
        """(position, shard, parts) of the epoch's images, the same in every process."""
        files = list(self.files)
        rng = random.Random(hash((self.order_seed, self.epoch)))
        if self.train:
            rng.shuffle(files)
        pos, held = 0, []
        for shard in files:
            for key, parts in members(shard):
                ref = (shard, key, parts)
                if self.train:
                    if len(held) < self.buffer:
                        held.append(ref)
                        continue
                    j = rng.randrange(len(held))
                    ref, held[j] = held[j], ref
                yield pos, ref
                pos += 1
        rng.shuffle(held)
        for ref in held:
            yield pos, ref
            pos += 1

    def mine(self, pos: int, workers: int, worker: int) -> bool:
        if self.train:
            b, j = divmod(pos, self.batch_size)
            return (
                b >= self.start
                and j % self.world == self.rank
                and ((b - self.start) % workers == worker)
            )
        if pos % self.world != self.rank:
            return False
        return (pos // self.world // self.batch_size) % workers == worker

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        end = self.n_batches() * self.batch_size if self.train else self.total
        for pos, (shard, key, parts) in self._stream():
            if pos >= end:
                break
            if self.mine(pos, workers, worker):
                im, label = self.read(shard, key, parts)
                yield self.tensor(im, pos), label, pos

    def read(self, shard: Path, key: str, parts: dict):
        info, image = describe(shard, key, parts)
        return decode_rgb(read_part(shard, image), f"{shard}:{info['path']}"), int(info["label"])

    def tensor(self, im, pos: int):
        rng = random.Random(hash((self.seed, self.epoch, pos)))
        if self.prepare is not None:
            im = self.prepare(im, None)
        if self.augment is not None:
            im = self.augment(im, rng)
        if self.pixels:
            return to_pixels(im, self.size, self.fit)
        return to_tensor(im, self.size, self.mean, self.std, self.fit)

    def framing_images(self, n: int) -> list:
        """The first ``n`` images of the split in file order."""
        out = []
        for shard in self.files:
            for key, parts in members(shard):
                if len(out) >= n:
                    return out
                out.append(self.read(shard, key, parts)[0])
        return out


class ShardImages(ImageDataset):
    """ShardSamples as an ImageDataset (evaluation: random access to each image's bytes)."""

    def path_of(self, i: int) -> Path:
        return Path(self.samples[i].shard) / self.samples[i].path

    def load(self, i: int):
        s = self.samples[i]
        return decode_rgb(read_part(s.shard, s.image), f"{s.shard}:{s.path}")
