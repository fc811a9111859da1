"""The self-contained HTML report: plots embedded as base64, tables, the run's configuration."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path


def _img(path: Path) -> str:
    b64 = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(Path(path).stem)}">'


def _table(header, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right} th{background:#f4f4f4} .figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0} figcaption{font-size:.9em;color:#555} img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}
.head td:first-child{text-align:left}
"""


def write_report(path: Path, run, m: dict, figures: dict) -> Path:
    thr = m["threshold"]
    head_rows = [[k, m[k]] for k in ("auc", "ap", "precision", "recall", "f1", "accuracy", "eer")]
    head_rows += [
        ["TPR at FPR 1%", m["tpr_at_fpr"]["1%"]],
        ["TPR at FPR 0.1%", m["tpr_at_fpr"]["0.1%"]],
    ]
    at05 = m["at_0.5"]
    at_rows = [
        [
            "stored ({criterion}, {computed_on})".format(**m["threshold_source"]),
            thr,
            m["accuracy"],
            m["precision"],
            m["recall"],
            m["f1"],
        ],
        [
            "F1-optimal on val",
            m["at_f1_threshold"]["threshold"],
            m["at_f1_threshold"]["accuracy"],
            m["at_f1_threshold"]["precision"],
            m["at_f1_threshold"]["recall"],
            m["at_f1_threshold"]["f1"],
        ],
        ["0.5", 0.5, at05["accuracy"], at05["precision"], at05["recall"], at05["f1"]],
    ]
    sweep_rows = [
        [r["threshold"], r["accuracy"], r["precision"], r["recall"], r["f1"], r["fpr"]]
        for r in m["sweep"]
    ]
    k = m["kde"]
    if "main_intersection" in k:
        kde_text = (
            f"The class densities cross at {k['main_intersection']:.4f} (all crossings: "
            f"{', '.join(f'{x:.4f}' for x in k['intersections'])}); the stored ROC "
            f"threshold is {thr:.4f}, a distance of "
            f"{k['distance_to_roc_threshold']:+.4f}."
        )
    else:
        kde_text = (
            "The class densities do not cross between the class modes "
            f"({k.get('note', 'crossings: ' + str(k.get('intersections')))})."
        )
    val_kde = m["stored_thresholds"].get("kde_intersection")
    if val_kde is not None:
        youden = m["stored_thresholds"]["youden"]
        kde_text += (
            f" On the validation split, where the threshold was chosen, the densities cross at "
            f"{val_kde:.4f} and Youden's J gives {youden:.4f} ({val_kde - youden:+.4f})."
        )
    parts = [
        f"<h1>fakescope evaluation: {html.escape(run.spec.backbone)} on "
        f"{html.escape(m['data'])} ({html.escape(m['split'])} split)</h1>",
        f"<p>{m['n_real']} real and {m['n_fake']} fake images; face stage: "
        f"{html.escape(m['faces'])}; run <code>{html.escape(str(run.path))}</code>.</p>",
        "<h2>Headline metrics at the stored threshold</h2>",
        '<div class="head">' + _table(["metric", "value"], head_rows) + "</div>",
        _table(["threshold", "value", "accuracy", "precision", "recall", "F1"], at_rows),
        "<h2>Threshold stability (0.30 to 0.90)</h2>",
        _table(["threshold", "accuracy", "precision", "recall", "F1", "FPR"], sweep_rows),
        "<h2>KDE intersection versus ROC threshold</h2>",
        f"<p>{kde_text}</p>",
    ]
    if m.get("per_source"):
        parts += [
            "<h2>Per generator</h2>",
            _table(
                ["generator", "n", "AUC vs all reals", "recall"],
                [[g, v["n"], v["auc"], v["recall"]] for g, v in m["per_source"].items()],
            ),
        ]
    parts.append("<h2>Figures</h2><div class='figs'>")
    for title, p in figures.items():
        parts.append(f"<figure>{_img(p)}<figcaption>{html.escape(title)}</figcaption></figure>")
    parts.append("</div>")
    if m.get("explanations"):
        parts += [
            "<h2>Explanations (Grad-CAM)</h2>",
            f"<p>{html.escape(m['explanations'].get('text', ''))}</p>",
        ]
    meta = run.meta.to_json()
    cfg = {
        k: meta.get(k)
        for k in ("model", "threshold", "faces", "train", "steps", "data", "versions")
    }
    parts += [
        "<h2>Run configuration</h2>",
        f"<pre>{html.escape(json.dumps(cfg, indent=2, default=str))}</pre>",
    ]
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>fakescope report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    Path(path).write_text(doc)
    return Path(path)


def _page(title: str, parts: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_matrix_report(path: Path, result: dict, tables: dict, generators: list, png) -> Path:
    """The cross-set report: AUC/AP/F1 tables (runs x data sets), the heatmap, per-generator
    tables. ``tables``: {title: (header, rows)}; ``generators``: [(caption, header, rows)]."""
    splits = sorted({c["split"] for c in result["cells"]})
    thr = ", ".join(f"{r['name']} {r['threshold']:.4f}" for r in result["runs"])
    parts = [
        "<h1>fakescope cross-set evaluation</h1>",
        "<h2>Cross-set matrix</h2>",
        f"<p>Split used: {html.escape(', '.join(splits))} (requested "
        f"{html.escape(result['split'])}). Every run at its stored threshold, chosen on its own "
        f"validation split ({html.escape(thr)}); nothing is tuned on the scored data. "
        "<code>*</code> marks a run's own data (in-domain).</p>",
    ]
    if result.get("limit_per_class"):
        parts.append(f"<p>At most {result['limit_per_class']} images per class per cell.</p>")
    for title, (header, rows) in tables.items():
        parts += [
            f"<h3>{html.escape(title)}</h3>",
            '<div class="head">',
            _table(header, rows),
            "</div>",
        ]
    parts.append(
        f"<figure>{_img(png)}<figcaption>AUC and F1 per run and data set</figcaption></figure>"
    )
    if generators:
        parts.append("<h2>Per generator</h2>")
        for caption, header, rows in generators:
            parts += [f"<h3>{html.escape(caption)}</h3>", _table(header, rows)]
    cells = [
        [c["run"], c["data"], c["split"], c["n_real"], c["n_fake"], c["precision"], c["recall"]]
        for c in result["cells"]
    ]
    parts += [
        "<h2>Cells</h2>",
        _table(["run", "data", "split", "real", "fake", "precision", "recall"], cells),
        "<h2>Runs and data sets</h2>",
        _table(["run", "folder"], [[r["name"], r["path"]] for r in result["runs"]]),
        _table(["data set", "folder"], [[d["name"], d["path"]] for d in result["datasets"]]),
    ]
    Path(path).write_text(_page("fakescope cross-set matrix", parts))
    return Path(path)


def write_robustness_report(path: Path, result: dict, rows: list[list], png) -> Path:
    """The robustness report: one row per (perturbation, level) and the curves figure."""
    parts = [
        f"<h1>fakescope robustness: {html.escape(result['run_name'])} on "
        f"{html.escape(result['data'])} ({html.escape(result['split'])} split)</h1>",
        "<h2>Robustness</h2>",
        f"<p>{result['n_real']} real and {result['n_fake']} fake images, every one perturbed "
        f"at each level (deterministically, seeded per image); scored at the stored threshold "
        f"{result['threshold']:.4f}. The 'clean' row is the unperturbed split. "
        "Perturbations act on the image the network sees (after the face stage, if any). "
        "Mean |shift|: mean absolute change of the score against the clean one.</p>",
        f"<figure>{_img(png)}<figcaption>AUC and F1 against perturbation strength (dotted: "
        "clean)</figcaption></figure>",
        '<div class="head">',
        _table(["perturbation", "level", "unit", "AUC", "F1", "accuracy", "mean |shift|"], rows),
        "</div>",
        f"<p>Run <code>{html.escape(result['run'])}</code>.</p>",
    ]
    Path(path).write_text(_page("fakescope robustness", parts))
    return Path(path)
