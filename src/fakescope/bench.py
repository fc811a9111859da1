"""Images per second for training and inference, fast path against the plain fp32 eager baseline
measured in the same process, so the ratio holds on whatever machine runs it.

``training_steps`` is the one timing probe for training steps: the benchmark, the scripts that
compare malloc settings and process counts, and the tests all measure through it.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

from .data.dataset import PREFETCH
from .data.transforms import normalise
from .errors import FakescopeError
from .model.detector import Detector
from .model.runtime import Runtime, cpu_summary, select_runtime
from .runs import ModelSpec
from .scoring.scorer import Scorer, TorchBackend


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _adam_step(model: nn.Module, rt: Runtime, net=None):
    """One Adam step of ``model`` (forward through ``net``, a DDP or compiled wrapper of it) on
    a batch, as training takes it: the batch moved to the device here, labels all zero."""
    net = model if net is None else net
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4)
    bce = nn.BCEWithLogitsLoss()
    model.train()

    def step(x):
        x = rt.batch(x)
        with rt.autocast():
            loss = bce(net(x).float().squeeze(1), torch.zeros(len(x), device=rt.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def training_steps(
    model: nn.Module, rt: Runtime, x: torch.Tensor, steps: int, warmup: int = 2, net=None
) -> dict:
    """Time ``steps`` Adam steps of ``model`` on batch ``x`` (after ``warmup`` untimed ones,
    where oneDNN picks kernels and the first blocks are faulted in). ``net`` is what forward is
    called on (a DDP wrapper of ``model``); the model is prepared for ``rt`` by the caller.
    Returns images per second, seconds, and this process's CPU seconds and minor page faults
    over the timed steps."""
    step = _adam_step(model, rt, net)
    x = rt.batch(x)
    for _ in range(warmup):
        step(x)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    _sync(rt.device)
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step(x)
    _sync(rt.device)
    secs, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "img_s": steps * len(x) / secs,
        "seconds": secs,
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "faults": r1.ru_minflt - r0.ru_minflt,
    }


def scoring_rate(scorer: Scorer, x: torch.Tensor, iters: int) -> float:
    """Images per second of ``scorer`` on batch ``x``, ``iters`` times (``Scorer.throughput``:
    as ``predict`` scores, calls in flight at once where the backend gains from them)."""
    return scorer.throughput([scorer.as_input(x)] * iters)  # converted once, not per batch


class _Eager:
    """The baseline: the model as built, no BatchNorm folding, no fast path."""

    def __init__(self, model: nn.Module, rt: Runtime):
        self.runtime, self.model = rt, rt.prepare(model).eval()

    @torch.no_grad()
    def logits(self, x):
        return self.model(self.runtime.batch(x)).float().reshape(-1).cpu()


def run_bench(backbone="resnet50", size=299, batch=16, iters=3, device="auto",
              compile=False) -> dict:  # fmt: skip
    base = select_runtime(device, fast=False)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    spec = ModelSpec(backbone, "flatten", size)
    print(
        f"fakescope bench: {backbone} at {size}px, batch {batch}, {iters} timed batches, "
        f"{torch.get_num_threads()} threads"
    )

    def model():
        return Detector(backbone, "flatten", size, weights="none")

    def rate(mode: str, rt: Runtime, fast: bool, compiled: bool = False) -> float:
        if mode == "training":
            m = rt.prepare(model())
            # the compiling happens in the warm-up steps, which are not timed
            net = torch.compile(m) if compiled else None
            return training_steps(m, rt, x, iters, warmup=3 if compiled else 1, net=net)["img_s"]
        backend = TorchBackend(model(), rt, compile=compiled) if fast else _Eager(model(), rt)
        scorer = Scorer(backend, spec, batch)
        if compiled:
            scorer.score_tensors(x)  # compiles, untimed
        return scoring_rate(scorer, x, iters)

    modes = ("inference", "training")
    # Every baseline first: on a CPU the fast runtime also changes how malloc keeps memory, for
    # the whole process and for good; on CUDA it turns on cuDNN's kernel search.
    baseline = {mode: rate(mode, base, False) for mode in modes}
    fast = select_runtime(device, fast=True)
    results = {}
    runs = {mode: {"baseline": baseline[mode], "fast": rate(mode, fast, True)} for mode in modes}
    if compile:
        for mode in modes:
            runs[mode]["compiled"] = rate(mode, fast, True, compiled=True)
    # where the fast path autocasts, the same path in fp32 too: what the lower precision adds;
    # last, since on CUDA it turns TF32 off for the rest of the process
    fast32 = select_runtime(device, fast=True, precision="fp32") if fast.amp_dtype else None
    if fast32 is not None:
        for mode in modes:
            runs[mode]["fast_fp32"] = rate(mode, fast32, True)
    for mode in modes:
        r = runs[mode]
        results[mode] = {**r, "ratio": r["fast"] / r["baseline"]}
        path = fast.describe() + (", BN folded" if mode == "inference" else "")
        line = (
            f"  {mode:9}: baseline fp32 eager {r['baseline']:7.2f} img/s   "
            f"{path:48} {r['fast']:7.2f} img/s   ratio {results[mode]['ratio']:.2f}x"
        )
        if fast32 is not None:
            line += f"   (same path in fp32: {r['fast_fp32']:.2f} img/s, autocast "
            line += f"{r['fast'] / r['fast_fp32']:.2f}x)"
        print(line)
        if compile:
            print(f"  {mode:9}: the same with torch.compile {r['compiled']:7.2f} img/s   ratio "
                  f"{r['compiled'] / r['baseline']:.2f}x")  # fmt: skip
    return results


def augment_settings() -> dict:
    """The augmentations the loader is timed with: what ``train`` does by default (flips), and
    the forensic set a robust run adds (JPEG round trips, blur, down-and-up resizing)."""
    from .config import TrainConfig
    from .data.transforms import Augment

    return {
        "train's defaults": Augment.of(TrainConfig()),
        "forensic": Augment(True, 0.5, (60, 100), 0.3, 0.3, 1.0),
    }


def _bench_loader(data, size, batch, workers, images, augment=None, pixels=False):
    """The training loader over ``data``'s train split (or shards), the split repeated until
    it holds at least ``images`` images, so that every worker gets batches to make even where
    the sample data is smaller than a few batches per worker. ``augment``: an ``Augment``, or
    None for none; ``pixels``: uint8 items, as training sends to a GPU
    (``Runtime.loader_sends_pixels``)."""
    from .data.dataset import ImageDataset, make_loader
    from .data.folders import load_samples
    from .data.shards import ShardSet, ShardStream, is_shards

    stream = is_shards(data)
    if stream:  # the stream training reads, in its own order
        ds = ShardStream(ShardSet.open(data), "train", batch, size=size, augment=augment)
    else:
        samples, _ = load_samples(data)
        train = [s for s in samples if s.split == "train"] or samples
        ds = ImageDataset(Path(data), train * -(-images // len(train)), size=size,
                          augment=augment)  # fmt: skip
    ds.pixels = pixels
    return make_loader(ds, batch, not stream, workers, pin=torch.cuda.is_available())


def _rate_after(it, warm: int, batches: int, use, device: torch.device) -> float:
    """Images per second of ``use`` on ``batches`` batches of loader iterator ``it`` (fewer if
    it ends), after ``warm`` untimed ones."""
    for _ in range(warm):
        use(next(it)[0])
    _sync(device)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x = next(it)[0]
        except StopIteration:
            break
        use(x)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t)


def loader_rate(data, size=299, batch=16, workers=0, batches=20, augment=None,
                pixels=False) -> float:  # fmt: skip
    """Images per second the training loader delivers from ``data``'s train split (decoding,
    the augmentations, resizing, normalising) with ``workers`` processes, the first
    batches (one per worker: they all start at once) untimed: what a GPU's training rate must
    not exceed."""
    warm = max(1, workers)
    it = iter(_bench_loader(data, size, batch, workers, (batches + warm) * batch, augment, pixels))
    return _rate_after(it, warm, batches, lambda x: None, torch.device("cpu"))


def fed_training_rate(data, model, rt: Runtime, size=299, batch=16, workers=0, batches=20,
                      net=None, augment=None, head_start=True) -> float:  # fmt: skip
    """Images per second of Adam steps on batches straight from the training loader, as
    ``train`` takes them: the rate a run gets when loader and model work at once. With
    ``head_start``, the batches the workers could have made ahead (``PREFETCH`` each) are taken
    untimed first: timed from a full queue, a loader slower than the model would look as fast
    as the model. A loader faster than the model keeps its queue full anyway."""
    train = _adam_step(model, rt, net)
    pixels = rt.loader_sends_pixels

    def step(x):
        train(normalise(rt.batch(x)) if pixels else x)

    warm = 3 + workers * PREFETCH * head_start
    it = iter(_bench_loader(data, size, batch, workers, (batches + warm) * batch, augment, pixels))
    return _rate_after(it, warm, batches, step, rt.device)


def run_loader_bench(data, size=299, batch=16, workers=(0, 2), batches=20, device="auto",
                     backbone="resnet50", compile=False) -> dict:  # fmt: skip
    """The loader's rate for each worker count beside the model's training rate on this
    device: where the loader is slower, the accelerator waits for data. Then training fed by
    the loader with the most workers: the rate a run gets. Each with train's default
    augmentations and with the forensic set (``augment_settings``)."""
    rt = select_runtime(device, fast=True)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    model = rt.prepare(Detector(backbone, "flatten", size, weights="none"))
    net = torch.compile(model) if compile else None
    steps = 10 if rt.device.type == "cuda" else 3  # a CPU takes seconds per step
    train = training_steps(model, rt, x, steps, warmup=3 if compile else 1, net=net)["img_s"]
    how = rt.describe() + (", torch.compile" if compile else "")
    print(f"fakescope bench --data: {data}, {size}px, batch {batch}")
    print(f"  model training ({backbone}, {how}): {train:8.1f} img/s")
    out = {"model_training": train, "loader": {}}
    form = "uint8 pixels" if rt.loader_sends_pixels else "float"
    w = max(workers)
    for name, aug in augment_settings().items():
        print(f"  augmentations: {name}")
        rates = out["loader"][name] = {}
        for n in workers:
            r = rates[n] = loader_rate(data, size, batch, n, batches, aug, rt.loader_sends_pixels)
            verdict = "keeps up" if r >= train else f"starves the model ({r / train:.2f}x its rate)"
            print(f"    loader ({form}), {n} worker(s): {r:8.1f} img/s   {verdict}")
        slower = rates[w] < train  # only then can the workers' head start flatter it
        fed = out.setdefault("fed", {})[name] = fed_training_rate(
            data, model, rt, size, batch, w, batches, net, aug, head_start=slower
        )
        print(f"    training fed by the loader, {w} worker(s): {fed:8.1f} img/s   "
              f"({fed / train:.2f}x the model's own rate)")  # fmt: skip
    return out


def _e2e(pred, files: list) -> float:
    """Files per second from disk to verdicts through ``pred`` (warmed up on a few files)."""
    for _ in pred.predict(files[:4]):
        pass
    t = time.perf_counter()
    n = sum(1 for r in pred.predict(files) if r.kind != "face" or r.face == 0)
    assert n >= len(files)
    return len(files) / (time.perf_counter() - t)


def confirmation_counts(pred) -> tuple[int, int] | None:
    """(images scored, images the run's network confirmed) so far where ``pred`` scores with
    a confirmed export (``ConfirmingBackend``), else None: how much of the end-to-end rate
    went to confirming. It depends on the files: 4.2 % of the bench's 330 sg-ffhq files,
    spread over all three splits, 8.5 % of the test split alone (docs/benchmarks.md)."""
    b = pred.scorer.backend
    return (b.seen, b.confirmed) if hasattr(b, "confirmed") else None


def spread(files: list, limit: int) -> list:
    """At most ``limit`` of ``files`` (0: all), evenly spaced rather than the first ones: sorted
    paths put one class (fake/) before the other, and the face stage costs more on some
    classes' images than on others'."""
    if not limit or len(files) <= limit:
        return files
    return [files[i * len(files) // limit] for i in range(limit)]


def face_stage_rate(files: list, quick: bool, n: int = 60) -> float:
    """Images per second of the "auto" face stage alone (decoded images in memory)."""
    from .data.faces import FaceCropper
    from .data.images import load_rgb

    ims = [load_rgb(f) for f in files[:n]]
    cropper = FaceCropper("auto", quick_test=quick)
    cropper.crops(ims[0])  # loads the detector
    t = time.perf_counter()
    for im in ims:
        cropper.crops(im)
    return len(ims) / (time.perf_counter() - t)


def _eager_predictor(run, faces: str, batch: int):
    """The baseline's pipeline: the run's network in fp32 eager, files prepared one by one."""
    from .scoring.predictor import Predictor

    scorer = Scorer(_Eager(run.model, select_runtime("cpu", fast=False)), run.spec, batch)
    return Predictor(run, device="cpu", batch_size=batch, faces=faces, progress=False,
                     workers=0, scorer=scorer)  # fmt: skip


_plain = None  # in the bench's child process: the plain baseline's pipeline


def _start_plain(run_path: str, faces: str, batch: int) -> None:
    """The bench's child process, where malloc stays as the C library sets it: the parent's
    fast runtime makes malloc keep freed memory for good, so there the plain baseline could
    only be timed before everything else. In the child its rounds take turns with the others'."""
    from .runs import load_run

    global _plain
    _plain = _eager_predictor(load_run(run_path), faces, batch)


def _plain_round(x: torch.Tensor, files: list, iters: int) -> tuple[float, float]:
    """One round of the plain baseline in the child: (model only, end to end) in images/s."""
    return scoring_rate(_plain.scorer, x, iters), _e2e(_plain, files)


def _model_batch(run, files: list, batch: int) -> torch.Tensor:
    """The batch every model-only rate repeats: ``batch`` of the files themselves (spread over
    them, as prepared for the network), not noise. An export that the network confirms near
    its threshold runs as fast as the share of images in its band lets it, and noise lay in the
    demo's band far more often than its images (session 30: 45 img/s model only on noise, 123
    end to end). Files that will not open are passed over; noise only if none opens."""
    from .data.images import is_video, load_rgb

    images = []
    for f in spread([f for f in files if not is_video(f)], batch):
        try:
            images.append(load_rgb(f, run.input_size))
        except (FakescopeError, OSError, ValueError):  # the end-to-end pass reports them
            continue
    if not images:
        return torch.randn(batch, 3, run.input_size, run.input_size)
    images = (images * batch)[:batch]
    return Scorer(None, run.spec).tensors(images, pixels=False)


def run_e2e_bench(
    run, data, faces="auto", limit=0, batch=16, workers=2, iters=3, rounds=1
) -> list[dict]:
    """``fakescope bench --e2e``: images/s from files to verdicts for each runtime the run has
    (torch, and every checked export), the model-only rate of each beside it, and the baseline
    (the run's network in fp32 eager, files prepared one after another), first in plain form
    (malloc as the C library sets it, as in a user's own script; timed in a child process) and
    again once fakescope's fast runtime has made malloc keep freed memory; then the face stage
    alone, with and without its quick test. With ``rounds`` > 1 every runtime is timed that
    many times, taking turns, the plain baseline first in each round, and the medians are
    reported: a shared machine drifts by 10-15 % within minutes (docs/benchmarks.md)."""
    from .data.images import list_files
    from .runs import load_run
    from .scoring.engines import artifact_backend, artifacts, backend_of
    from .scoring.predictor import Predictor

    run = load_run(run)
    files = list_files([data])
    files = spread(files, limit)
    if not files:
        raise FakescopeError(f"{data}: no images to time")
    passes = 2 if run.tta else 1
    x = _model_batch(run, files, batch)
    print(
        f"fakescope bench --e2e: {run.path} ({run.spec.backbone} at {run.input_size}px, "
        f"{passes} pass(es) per image), {len(files)} files of {data}, faces {faces}, "
        f"batch {batch}, CPU: {cpu_summary()}"
    )

    def predictor(backend, workers):
        scorer = Scorer(backend, run.spec, batch)
        return Predictor(run, device="cpu", batch_size=batch, faces=faces, progress=False,
                         workers=workers, scorer=scorer)  # fmt: skip

    times: dict[str, dict[str, list[float]]] = {}

    def record(name, started, model, e2e):
        t = times.setdefault(name, {"model": [], "e2e": [], "at": []})
        t["at"].append(started)
        t["model"].append(model)
        t["e2e"].append(e2e)

    confirmed: dict[str, list[int]] = {}  # runtime: [images scored, confirmed] end to end

    def measure(name, pred):
        started = time.monotonic()
        model = scoring_rate(pred.scorer, x, iters)
        before = confirmation_counts(pred)
        e2e = _e2e(pred, files)
        if before is not None:
            after, sums = confirmation_counts(pred), confirmed.setdefault(name, [0, 0])
            sums[0] += after[0] - before[0]
            sums[1] += after[1] - before[1]
        record(name, started, model, e2e)

    # The plain baseline runs in a child process: the fast runtime selected below makes malloc
    # keep freed memory for this whole process and for good, which a user's own torch script
    # would not have, and which alone made the eager pipeline 2-3x faster (mobilenet_v2 10.4 ->
    # 31.9 img/s end to end, resnet50 3.5 -> 7.1; docs/benchmarks.md).
    ctx = multiprocessing.get_context("spawn")
    child = ProcessPoolExecutor(1, ctx, _start_plain, (str(run.path), faces, batch))
    plain = _eager_predictor(run, faces, batch)
    fast = select_runtime("cpu", precision=run.spec.precision)  # from here on malloc keeps memory
    rows = [
        ("torch fp32 eager, one file at a time, malloc kept", plain),
        (f"torch {fast.describe()}, BN folded", predictor(TorchBackend(run.model, fast), workers)),
    ]
    # The peers: each exported file run as a user would load it, with its dynamic batch, model
    # only. The goal is end to end against the best int8 peer; fakescope's own
    # model-only rate (a copy compiled for the batch size) is the stricter yardstick beside it.
    peers = {}
    for art in artifacts(run):
        rows.append((art.name, predictor(artifact_backend(art, run, batch), workers)))
        # the peer is the file alone, as a user would run it, even where fakescope confirms
        peers[art.name] = Scorer(backend_of(art.runtime, art.model_file), run.spec, batch)
    peer_rates: dict[str, list[float]] = {name: [] for name in peers}
    with child:
        for _ in range(max(1, rounds)):
            started = time.monotonic()  # the baseline first: results[0]
            model, e2e = child.submit(_plain_round, x, files, iters).result()
            record("torch fp32 eager, one file at a time, plain malloc (baseline)", started,
                   model, e2e)  # fmt: skip
            for name, pred in rows:
                measure(name, pred)
                if name in peers:
                    peer_rates[name].append(scoring_rate(peers[name], x, iters))
    median = statistics.median
    results = [
        {"runtime": name, "e2e": median(t["e2e"]), "model": median(t["model"]),
         "e2e_all": t["e2e"], "model_all": t["model"], "started": t["at"],
         "confirmed_share": (confirmed[name][1] / max(confirmed[name][0], 1)
                             if name in confirmed else None)}
        for name, t in times.items()
    ]  # fmt: skip
    base = results[0]["e2e"]
    ranged = rounds > 1
    note = "   (end to end: min-max of the rounds)" if ranged else ""
    w = max(len(r["runtime"]) for r in results)
    print(f"  {'runtime':{w}} {'end to end':>12} {'x baseline':>10} {'model only':>12} "
          f"{'e2e/model':>9}{note}")  # fmt: skip
    for r in results:
        r["ratio"] = r["e2e"] / base
        r["of_model"] = r["e2e"] / r["model"]
        extra = f"   ({min(r['e2e_all']):.1f}-{max(r['e2e_all']):.1f})" if ranged else ""
        print(f"  {r['runtime']:{w}} {r['e2e']:8.1f} img/s {r['ratio']:9.2f}x "
              f"{r['model']:8.1f} img/s {r['of_model']:8.2f}x{extra}")  # fmt: skip
    for r in results:
        if r["runtime"] in peer_rates:
            r["peer_model"] = median(peer_rates[r["runtime"]])
            r["of_peer"] = r["e2e"] / r["peer_model"]
            print(
                f"  {r['runtime']} as exported (dynamic batch), model only: "
                f"{r['peer_model']:.1f} img/s; end to end is {r['of_peer']:.2f}x of it"
            )
    for r in results:
        if r["confirmed_share"] is not None:
            print(f"  {r['runtime']}: the run's network confirmed {100 * r['confirmed_share']:.1f} "
                  f"% of the images end to end (those near the threshold)")  # fmt: skip
    if faces == "auto":
        slow, quick = face_stage_rate(files, False), face_stage_rate(files, True)
        print(f"  face stage alone (auto): MTCNN {slow:.1f} img/s, with the quick test "
              f"{quick:.1f} img/s ({quick / slow:.2f}x)")  # fmt: skip
    return results
