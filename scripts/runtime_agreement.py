"""Issue 12's must-shows 2 and 3: does every runtime of a run give the torch model's answers?

For each runtime named, the run's test split is scored three ways, each through the real
command: `fakescope evaluate` (test AUC, F1 and the threshold it used), `fakescope predict`
on the same files (CSV), and `fakescope serve` on a free port with every file posted to
/v1/predict. Each runtime's verdicts are then compared with the first runtime's (torch) on
each surface, and the disagreements are split into those where a score lies within ``--near``
of its runtime's threshold and those where none does. Within one runtime the three surfaces
must agree exactly: they share the scorer and the threshold.

    python scripts/runtime_agreement.py runs/demo-amx --data ../shared/data/sg-ffhq \\
        --runtimes torch openvino-int8 onnx-fp32 --out /tmp/agree
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import start  # noqa: E402

from fakescope.errors import FakescopeError  # noqa: E402
from fakescope.model.runtime import cpu_summary  # noqa: E402
from fakescope.runs import load_run  # noqa: E402
from fakescope.scoring.engines import choose  # noqa: E402


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fakescope.cli", *args], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def test_files(run: Path, data: Path) -> list[Path]:
    with open(run / "split.csv") as f:
        return [data / r["path"] for r in csv.DictReader(f) if r["split"] == "test"]


def by_evaluate(run: Path, data: Path, runtime: str, faces: str, out: Path):
    where = out / f"eval-{runtime}"
    cli("evaluate", str(run), "--data", str(data), "--split", "test", "--runtime", runtime,
        "--explain", "0", "--faces", faces, "--out", str(where))  # fmt: skip
    metrics = json.loads((where / "metrics.json").read_text())
    with open(where / "scores.csv") as f:
        scores = {str(data / r["path"]): float(r["score"]) for r in csv.DictReader(f)}
    return metrics, scores


def first_faces(rows) -> dict[str, float]:
    """path -> score of the file's first row (a face crop yields one face row)."""
    out: dict[str, float] = {}
    for r in rows:
        if r.get("score") not in (None, "") and r["path"] not in out:
            out[r["path"]] = float(r["score"])
    return out


def by_predict(run: Path, files: list[Path], runtime: str, faces: str, out: Path):
    table = out / f"predict-{runtime}.csv"
    cli("predict", str(run), *map(str, files), "--runtime", runtime, "--faces", faces,
        "--csv", str(table), "--quiet")  # fmt: skip
    with open(table) as f:
        return first_faces(csv.DictReader(f))


def by_serve(run: Path, files: list[Path], runtime: str, faces: str):
    proc, url = start(str(run), ["--runtime", runtime, "--faces", faces])
    try:
        rows, threshold = [], None
        with httpx.Client(timeout=120) as http:
            for f in files:
                r = http.post(url + "/v1/predict", files=[("files", (f.name, f.read_bytes()))])
                r.raise_for_status()
                body = r.json()
                threshold = body["threshold"]
                rows += [{**row, "path": str(f)} for row in body["files"][0]["rows"]]
        return first_faces(rows), threshold
    finally:
        proc.terminate()
        proc.wait(30)


def compare(ref: dict, ref_t: float, got: dict, got_t: float, near: float) -> dict:
    differ = [p for p in ref if (ref[p] >= ref_t) != (got[p] >= got_t)]
    close = [p for p in differ if abs(ref[p] - ref_t) <= near or abs(got[p] - got_t) <= near]
    return {"n": len(ref), "differ": len(differ), "near_threshold": len(close),
            "away": sorted(set(differ) - set(close))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--runtimes", nargs="+", default=["torch", "openvino-int8"])
    ap.add_argument("--near", type=float, default=0.01)
    ap.add_argument(
        "--faces",
        default="auto",
        help="the face stage of all three (default: predict's and serve's)",
    )
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    try:  # every runtime named must exist before minutes are spent on the first
        run = load_run(a.run)
        for rt in a.runtimes:
            choose(run, rt)
    except FakescopeError as e:
        sys.exit(f"runtime_agreement: {e}")
    a.out.mkdir(parents=True, exist_ok=True)
    files = test_files(a.run, a.data)
    print(f"{a.run}: {len(files)} test files of {a.data}, faces {a.faces}; CPU: {cpu_summary()}")
    seen = {}
    for rt in a.runtimes:
        metrics, ev = by_evaluate(a.run, a.data, rt, a.faces, a.out)
        t = metrics["threshold"]
        pr = by_predict(a.run, files, rt, a.faces, a.out)
        sv, sv_t = by_serve(a.run, files, rt, a.faces)
        assert set(ev) == set(pr) == set(sv) == set(map(str, files)), rt
        inside = {s: compare(ev, t, other, t, 0.0)["differ"] for s, other in
                  (("predict", pr), ("serve", sv))}  # fmt: skip
        assert sv_t == t, (rt, sv_t, t)
        seen[rt] = {"threshold": t, "evaluate": ev, "predict": pr, "serve": sv}
        print(f"  {rt:14} test AUC {metrics['auc']:.4f}  F1 {metrics['f1']:.4f} at its "
              f"threshold {t:.4f}; verdicts unlike evaluate's: predict {inside['predict']}, "
              f"serve {inside['serve']}; scores differ from evaluate's by up to "
              f"{max(abs(ev[p] - pr[p]) for p in ev):.6f} (predict), "
              f"{max(abs(ev[p] - sv[p]) for p in ev):.6f} (serve)")  # fmt: skip
        seen[rt]["metrics"] = {k: metrics[k] for k in ("auc", "f1", "precision", "recall")}
    ref = a.runtimes[0]
    r = seen[ref]
    summary = {"cpu": cpu_summary(), "runtimes": {k: {**v["metrics"], "threshold": v["threshold"]}
                                                 for k, v in seen.items()}}  # fmt: skip
    for rt in a.runtimes[1:]:
        g = seen[rt]
        print(f"  {rt} against {ref}: AUC {g['metrics']['auc'] - r['metrics']['auc']:+.4f}, "
              f"F1 {g['metrics']['f1'] - r['metrics']['f1']:+.4f}")  # fmt: skip
        for surface in ("evaluate", "predict", "serve"):
            c = compare(r[surface], r["threshold"], g[surface], g["threshold"], a.near)
            summary["runtimes"][rt][surface] = c
            print(f"    {surface:8}: {c['differ']} of {c['n']} verdicts differ, "
                  f"{c['near_threshold']} of them within {a.near} of a threshold; "
                  f"away: {[Path(p).name for p in c['away']]}")  # fmt: skip
    (a.out / "agreement.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
