"""The report step: tables and figures from a metrics table built by the metrics step.

Score files are written by hand with set counts of correct answers, so the cells are
known: a test set has 40 fakes and 40 reals; the reals are always 36 right; the fakes
``fake_ok(...)`` right. Two seeds, two training generators, three test sets (G1 and G2
share their reals, G3 has its own), three detectors (one an ablation variant).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bilora.errors import UserError
from bilora.metrics import load_draws, mean_interval, run_metrics
from bilora.report import render_report, report_outputs
from bilora.report.context import Context
from bilora.report.estimates import Results
from bilora.report.layout import Column, Est, Table
from bilora.report.paper import load_published, paper_vs_reproduced
from bilora.report.tables import matrix

N = 40
LABELS = {"bilora": "Bi-LoRA (test)", "resnet50": "ResNet50 (test)",
          "bilora@r=4": "Bi-LoRA (test) [r=4]"}
TRAIN, TEST, SEEDS = ["G1", "G2"], ["G1", "G2", "G3"], [0, 1]
CONDS = [("none", "-"), ("jpeg", "75"), ("jpeg", "30"), ("noise", "10")]
PARAMS = {"bilora": (1000, 100), "bilora@r=4": (975, 25), "resnet50": (500, 500)}
PREPROCESSING = {"bilora": {"fit": "resize", "size": 224, "mean": [0.48145466, 0.4578275,
                                                              0.40821073],
                             "std": [0.26862954, 0.26130258, 0.27577711],
                             "resize": {"do_resize": True, "size": {"height": 224,
                                                                    "width": 224}}},
                 "resnet50": {"fit": "crop", "size": 224, "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225]}}
PUBLISHED = Path(__file__).resolve().parent.parent / "workflow" / "published" / "bilora.yaml"


def fake_ok(det: str, train: str, seed: int, test: str, level: str) -> int:
    k = 38 if train == test else 30 + (2 if det.startswith("bilora") else 0) - seed
    return k - {"-": 0, "75": 2, "30": 6, "10": 4}[level] - (3 if det == "bilora@r=4" else 0)


def _score_file(path, det, train, seed, nan=0):
    frames = []
    for t in TEST:
        for pert, level in CONDS:
            k = fake_ok(det, train, seed, t, level)
            pf = np.r_[np.linspace(0.99, 0.6, k), np.linspace(0.4, 0.01, N - k)]
            pr = np.r_[np.linspace(0.01, 0.45, 36), np.linspace(0.55, 0.9, N - 36)]
            if nan and t == "G1" and pert == "none":
                pf[N - nan:] = np.nan  # no answer: wrong, and counted as unlabelled
            reals = [f"r{i}" for i in range(N)] if t != "G3" else [f"g3r{i}" for i in range(N)]
            frames.append(pd.DataFrame({
                "sha1": [f"{t}f{i}" for i in range(N)] + reals, "generator": t,
                "label": np.r_[np.ones(N), np.zeros(N)].astype("int8"), "perturbation": pert,
                "level": level, "p_fake": np.r_[pf, pr].astype("float32")}))
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    total, trainable = PARAMS[det]
    meta = {b"detector": det.encode(), b"train": train.encode(), b"seed": str(seed).encode(),
            b"detector_label": b"LABEL FROM METADATA",
            b"parameters": json.dumps({"total": total, "trainable": trainable}).encode()}
    if det in PREPROCESSING:  # the ablation variant's scores predate the record: n/a
        meta[b"preprocessing"] = json.dumps(PREPROCESSING[det]).encode()
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), path)


def _manifest(path, new_columns=True):
    rows = []
    for g in TEST:
        for i in range(4):
            rows.append({"path": f"{g}/{i}.png", "label": 1, "generator": g, "split": "test",
                         "sha1": f"{g}f{i}", "format": "PNG", "mode": "RGB", "width": 256,
                         "height": 256, "jpeg_quality": np.nan})
            rid = f"r{i}" if g != "G3" else f"g3r{i}"
            rows.append({"path": f"real/{rid}.jpg", "label": 0, "generator": g,
                         "split": "test", "sha1": rid, "format": "JPEG" if i else "PNG",
                         "mode": "RGB", "width": 300 + i, "height": 200 - i,
                         "jpeg_quality": np.nan if i == 0 else 70.0 + i})
    df = pd.DataFrame(rows)
    path.parent.mkdir(parents=True)
    (df if new_columns else df[["path", "label", "generator", "split", "sha1"]]).to_parquet(path)
    return path


def make_spec(**over):
    spec = {"run": "t", "train": TRAIN, "test": TEST, "labels": dict(LABELS),
            "note": "Synthetic test data, not the paper's.", "threshold": 0.5,
            "confidence": 0.95, "seeds": SEEDS,
            "variants": {"bilora@r=4": {"base": "bilora", "key": "lora.r", "value": 4,
                                        "base_value": 16}},
            "real_sets": {"G1": "shared reals", "G2": "shared reals", "G3": "own reals"},
            "published": {"file": str(PUBLISHED), "map": {"LDM": "G1", "ADM": "G2",
                                                          "DDPM": "G3"},
                          "comparable": False},
            "format_control": None, "protocol": "ricker"}
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    scores = []
    for det in LABELS:
        for g in TRAIN:
            for s in SEEDS:
                p = d / f"scores_{det}_{g}_{s}.parquet"
                _score_file(p, det, g, s, nan=3 if (det, g, s) == ("bilora", "G2", 1) else 0)
                scores.append(p)
    run_metrics(scores, d / "metrics.parquet", resamples=200)
    manifests = [_manifest(d / "data" / "ds1" / "manifest.parquet"),
                 _manifest(d / "data" / "old" / "manifest.parquet", new_columns=False)]
    (d / "warnings.json").write_text(json.dumps([
        {"source": "fetch", "message": "digest mismatch on test/ of ricker: 3 files differ",
         "affects": ["detectors"]}]))
    spec = make_spec()
    paths = render_report(d / "metrics.parquet", d / "bootstrap.npz", spec, d / "tables",
                          d / "figures", manifests, scores, d / "warnings.json")
    return {"dir": d, "spec": spec, "paths": paths, "scores": scores, "manifests": manifests}


@pytest.fixture(scope="module")
def renamed(run):
    """The same metrics with other labels, no variants, an extra detector never run,
    no warnings file, format control on and the corrected protocol."""
    d = run["dir"]
    labels = {"bilora": "Renamed Bi", "resnet50": "Renamed RN", "xception": "Never run"}
    spec = make_spec(labels=labels, variants={}, published=None, protocol="corrected",
                     format_control={"jpeg_quality": 90})
    out = d / "renamed"
    paths = render_report(d / "metrics.parquet", d / "bootstrap.npz", spec, out / "tables",
                          out / "figures", run["manifests"], run["scores"], None)
    return {"dir": out, "spec": spec, "paths": paths}


def _ctx(run, **over):
    d = run["dir"]
    spec = make_spec(**over)
    res = Results.load(d / "metrics.parquet", d / "bootstrap.npz", 0.95, spec["seeds"])
    return Context(spec, res, {"bilora": {"total": 1000, "trainable": 100}})


def _positions(table, det, train, tests, seeds=SEEDS):
    keys = set(table[["detector", "train", "seed", "test", "perturbation"]]
               .itertuples(index=False, name=None))
    assert all((det, train, s, t, "none") in keys for s in seeds for t in tests)
    m = (table.detector == det) & (table.train == train) & table.seed.isin(seeds) & \
        table.test.isin(tests) & (table.perturbation == "none")
    return np.flatnonzero(m.to_numpy())


# -- files ------------------------------------------------------------------------------

def test_every_declared_output_is_written_and_nothing_else(run, renamed):
    for r in (run, renamed):
        tables, figures = report_outputs(r["spec"])
        written = {p.name for p in (r["dir"] / "tables").iterdir()}
        assert written == set(tables)
        assert {p.name for p in (r["dir"] / "figures").iterdir()} == set(figures)
        assert sorted(p.name for p in r["paths"]) == sorted(tables + figures)
        assert all(p.stat().st_size > 0 for p in r["paths"])
        assert all(p.stat().st_size > 5000 for p in r["paths"] if p.suffix == ".png")
    tables, figures = report_outputs(run["spec"])
    assert {"ablation.tex", "paper_vs_reproduced.md", "f1_matrix_bilora@r=4.csv",
            "robustness_by_train.csv", "data_card.md", "warnings.md"} <= set(tables)
    assert "robustness_by_train.md" not in tables and "ablation.png" in figures


def test_ablation_only_with_variants(run, renamed):
    tables, figures = report_outputs(renamed["spec"])
    assert not [n for n in tables + figures if n.startswith("ablation")]
    assert "paper_vs_reproduced.csv" not in tables  # published: null
    ab = pd.read_csv(run["dir"] / "tables" / "ablation.csv")
    assert list(ab["detector"]) == ["bilora@r=4", "bilora"]  # by value: 4, 16 (the base)
    assert list(ab["value"]) == [4, 16] and list(ab["is_base"]) == [False, True]
    assert list(ab["trainable"]) == [25, 100]  # from the score files' metadata
    # bilora@r=4 on unseen cells: 32 - seed - 3 fakes right of 40, 36 reals of 40
    acc = ab.loc[0]
    assert acc["accuracy_unseen_value"] == pytest.approx(100 * (28.5 + 36) / 80, abs=1e-3)
    assert acc["accuracy_unseen_lo"] < acc["accuracy_unseen_value"] < acc["accuracy_unseen_hi"]
    md = (run["dir"] / "tables" / "ablation.md").read_text()
    assert "| Bi-LoRA (test) | lora.r | 16 (base) |" in md


def test_ablation_figure_with_listed_values_and_an_unknown_base(tmp_path):
    from bilora.report.figures import ablation

    pts = [{"value": None, "detector": "b", "is_base": True, "known": False,
            "est": Est(80.0, 78.0, 82.0), "parameters": {"trainable": 10, "total": 20}},
           {"value": ["q_proj", "v_proj"], "detector": "b@t=q+v", "is_base": False,
            "known": True, "est": Est(82.0, 80.0, 84.0),
            "parameters": {"trainable": 5_242_880, "total": 20}},
           {"value": ["q_proj"], "detector": "b@t=q", "is_base": False, "known": True,
            "est": Est(float("nan"), missing="not run"), "parameters": None}]
    paths = ablation([{"base": "b", "key": "lora.target_modules", "points": pts}],
                     {"b": "B"}, "title", tmp_path)
    assert [p.name for p in paths] == ["ablation.png", "ablation.pdf"]
    assert all(p.stat().st_size > 5000 for p in paths)


# -- numbers in the right cells ---------------------------------------------------------

def test_matrix_cell_and_mean_with_interval_and_seed_sd(run):
    t = pd.read_csv(run["dir"] / "tables" / "accuracy_matrix_bilora.csv")
    metrics = pd.read_parquet(run["dir"] / "metrics.parquet")
    draws = load_draws(run["dir"] / "bootstrap.npz")
    cell = t[(t.train == "G1") & (t.column == "G3")].iloc[0]
    # seed 0: 32 + 36 of 80 right, seed 1: 31 + 36
    assert cell["value"] == pytest.approx(100 * (68 + 67) / 2 / 80, abs=1e-3)
    assert cell["seed_sd"] == pytest.approx(100 * np.std([68 / 80, 67 / 80], ddof=1), abs=1e-3)
    assert cell["seeds"] == 2
    rows = _positions(metrics, "bilora", "G1", ["G3"])
    assert [cell["lo"], cell["hi"]] == pytest.approx(
        [100 * x for x in mean_interval(draws, rows, metrics,
                                        "accuracy", 0.95)[1:]], abs=1e-3)
    mean = t[(t.train == "G1") & (t.column == "mean (unseen)")].iloc[0]
    assert mean["sets"] == "G2;G3"
    rows = _positions(metrics, "bilora", "G1", ["G2", "G3"])
    point, lo, hi = mean_interval(draws, rows, metrics, "accuracy", 0.95)
    assert [mean["value"], mean["lo"], mean["hi"]] == pytest.approx(
        [100 * point, 100 * lo, 100 * hi], abs=1e-3)
    assert lo < point < hi and hi - lo > 0.01
    # the train-set means exist because G3 is no training generator; the paper's kind
    all_t = t[(t.train == "G2") & (t.column == "mean (all, train sets)")].iloc[0]
    assert all_t["sets"] == "G1;G2"
    assert all_t["value"] == pytest.approx(100 * ((68 + 67) / 2 + 74) / 2 / 80, abs=1e-3)
    md = (run["dir"] / "tables" / "accuracy_matrix_bilora.md").read_text()
    g1 = [line for line in md.splitlines() if line.startswith("| G1 |")][0].split(" | ")
    assert g1[3] == f"84.4 [{cell['lo']:.1f}, {cell['hi']:.1f}] ±0.9"
    assert "| train \\ test | G1 | G2 | G3 | mean (unseen) | mean (all) |" in md
    assert "Real images per column: shared reals (40 unique images): G1, G2; own reals" \
        not in md  # the manifest, not the scores, counts the reals: 4 per set
    assert "shared reals (4 unique images): G1, G2; own reals (4 unique images): G3" in md


def test_one_seed_has_no_spread(run):
    ctx = _ctx(run, seeds=[1])
    t = matrix(ctx, "bilora", "accuracy")
    cell = t.data[(t.data.train == "G1") & (t.data.column == "G3")].iloc[0]
    assert cell["value"] == pytest.approx(100 * 67 / 80) and np.isnan(cell["seed_sd"])
    assert "±" not in t.markdown().split("|---")[1]  # no spread in any cell
    assert "One training seed (1)." in t.markdown()


def test_detectors_and_robustness_tables(run):
    d = run["dir"] / "tables"
    det = pd.read_csv(d / "detectors.csv")
    seen = det[(det.detector == "resnet50") & (det.cells == "seen")].iloc[0]
    assert seen["value"] == pytest.approx(100 * 74 / 80, abs=1e-3)
    ap = det[(det.detector == "bilora") & (det.metric == "ap")].iloc[0]
    assert np.isnan(ap["lo"]) and ap["value"] > 50  # AP has no interval
    rob = pd.read_csv(d / "robustness_accuracy.csv")
    r = rob[(rob.detector == "bilora") & (rob.level.astype(str) == "30")].iloc[0]
    # jpeg 30: 6 fewer fakes right everywhere; mean over 2 train x 3 test x 2 seeds
    fakes = np.mean([fake_ok("bilora", g, s, t, "30") for g in TRAIN for s in SEEDS
                     for t in TEST])
    assert r["value"] == pytest.approx(100 * (fakes + 36) / 80, abs=1e-3)
    md = (d / "robustness_accuracy.md").read_text()
    assert "| detector | clean | noise 10 | JPEG 75 | JPEG 30 |" in md
    tex = (d / "robustness_accuracy.tex").read_text()
    assert r"\multicolumn{2}{c}{JPEG}" in tex and r"\cmidrule(lr){4-5}" in tex
    by_train = pd.read_csv(d / "robustness_by_train.csv")
    assert len(by_train) == len(LABELS) * len(TRAIN) * len(CONDS)
    assert {"accuracy_value", "accuracy_lo", "accuracy_hi", "auc_value", "auc_seed_sd"} <= \
        set(by_train.columns)
    assert "Ricker et al.'s code" in md


def test_unlabelled_counts_per_cell(run):
    u = pd.read_csv(run["dir"] / "tables" / "unlabelled.csv")
    assert len(u) == len(LABELS) * len(TRAIN) * len(SEEDS)
    hit = u[(u.detector == "bilora") & (u.train == "G2") & (u.seed == 1)].iloc[0]
    assert hit["unlabelled"] == 3 and hit["images"] == 3 * 80
    assert hit["share_pct"] == pytest.approx(100 * 3 / 240)
    assert u["unlabelled"].sum() == 3  # zeros everywhere else, and written


# -- labels, captions, formats ----------------------------------------------------------

def test_labels_come_from_the_spec_only(run, renamed):
    for p in run["paths"] + renamed["paths"]:
        if p.suffix in (".csv", ".md", ".tex"):
            assert "LABEL FROM METADATA" not in p.read_text(), p
    old = (run["dir"] / "tables" / "accuracy_matrix_resnet50.md").read_text()
    new = (renamed["dir"] / "tables" / "accuracy_matrix_resnet50.md").read_text()
    assert "Renamed RN" in new and "ResNet50 (test)" not in new
    # the only other differences: the caption lines about format control and protocol
    new = new.replace("Renamed RN", "ResNet50 (test)").replace(
        " Every image was re-encoded as JPEG quality 90 before use (data.format_control).", "")
    assert new == old
    a = pd.read_csv(run["dir"] / "tables" / "accuracy_matrix_resnet50.csv")
    b = pd.read_csv(renamed["dir"] / "tables" / "accuracy_matrix_resnet50.csv")
    assert (b["label"] == "Renamed RN").all()
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"))


def test_captions_carry_note_format_control_protocol_and_warnings(run, renamed):
    for p in renamed["paths"]:
        if p.suffix in (".md", ".tex") and p.stem != "warnings":
            text = p.read_text()
            assert "Synthetic test data" in text, p
            assert "re-encoded as JPEG quality 90" in text, p
    assert "protocol 'corrected'" in (renamed["dir"] / "tables" / "robustness_auc.md").read_text()
    t = run["dir"] / "tables"
    assert "See warnings.md: digest mismatch on test/ of ricker" in (t / "detectors.md").read_text()
    assert "See warnings.md" in (t / "detectors.tex").read_text()
    assert "See warnings.md" not in (t / "accuracy_matrix_bilora.md").read_text()
    assert "**fetch**: digest mismatch" in (t / "warnings.md").read_text()
    assert "re-encoded" not in (t / "detectors.md").read_text()
    # a detector in the spec without metrics: "not run" cells and a warning, no crash
    rt = renamed["dir"] / "tables"
    assert "| G1 | not run | not run | not run | not run |" in \
        (rt / "accuracy_matrix_xception.md").read_text()
    assert "xception (Never run) has no rows in the metrics" in (rt / "warnings.md").read_text()
    assert "See warnings.md: detector xception" in (rt / "detectors.md").read_text()
    clean = make_spec(labels={"bilora": "B"}, variants={}, published=None)
    assert report_outputs(clean)[0][-1] == "warnings.md"


def test_no_tuple_labels_anywhere(run):
    for p in run["paths"]:
        if p.suffix in (".md", ".csv", ".tex"):
            text = p.read_text()
            assert not re.search(r"\(\s*'[^']*'\s*,", text), p
            assert "('" not in text and "')" not in text, p


def _scan(text: str):
    """(row cells at brace depth 0, brace balance) of a tabular body; escapes honoured."""
    rows, cells, depth, i, cur = [], [], 0, 0, []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            if text[i + 1] == "\\" and depth == 0:
                cells.append("".join(cur))
                rows.append(cells)
                cells, cur = [], []
            else:
                cur.append(text[i:i + 2])
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            assert depth >= 0, text[max(0, i - 60):i + 1]
        if c == "&" and depth == 0:
            cells.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    return rows, depth


def check_latex(tex: str) -> int:
    """Structural check of one table file; returns the number of tabulars."""
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert not re.search(r"(?<!\\)%", body), "unescaped %"
    assert not re.search(r"(?<!\\)_", body), "unescaped _"
    assert not re.search(r"(?<!\\)#", body)
    assert _scan(body)[1] == 0, "unbalanced braces"
    assert body.count(r"\begin{") == body.count(r"\end{")
    tabulars = re.findall(r"\\begin\{tabular\}\{(.*?)\}\n(.*?)\\end\{tabular\}", body, re.S)
    for spec, inner in tabulars:
        ncol = len(re.sub(r"p\{[^}]*\}", "p", spec))
        assert set(re.sub(r"p\{[^}]*\}", "p", spec)) <= set("lcrp"), spec
        rows, depth = _scan(inner)
        assert depth == 0
        for cells in rows:
            cells = [re.sub(r"\\(toprule|midrule|bottomrule|addlinespace(\[\w+\])?)|"
                            r"\\cmidrule\(lr\)\{\d+-\d+\}", "", c).strip() for c in cells]
            if cells == [""]:
                continue
            spans = sum(int(n) - 1 for c in cells for n in re.findall(r"\\multicolumn\{(\d+)\}",
                                                                       c))
            assert len(cells) + spans == ncol, (spec, cells)
    return len(tabulars)


def test_latex_tables_are_well_formed(run, tmp_path):
    texs = [p for p in run["paths"] if p.suffix == ".tex"]
    assert len(texs) == 2 * len(LABELS) + 5
    for p in texs:
        assert check_latex(p.read_text()) >= 1, p
    caption = (run["dir"] / "tables" / "detectors.tex").read_text()
    assert r"(\%)" in caption and r"$\pm$" in caption and r"\multicolumn{5}{c}" in caption
    with pytest.raises(AssertionError):
        check_latex("\\begin{tabular}{ll}\na & b & c \\\\\n\\end{tabular}\n")
    with pytest.raises(AssertionError):
        check_latex("\\caption{50 % of_it}\n")
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text(  # a 16 cm text width (layout.TEXT_WIDTH_CM): no table may overflow
            "\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
            "\\setlength{\\textwidth}{16cm}\\setlength{\\oddsidemargin}{0cm}"
            "\\begin{document}\n" + "".join(f"\\input{{{p}}}\\clearpage\n" for p in texs)
            + "\\end{document}\n")
        out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                              doc.name], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout[-3000:]
        assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text()


def test_wide_tables_split_into_page_wide_tabulars(run):
    t = matrix(_ctx(run), "bilora", "accuracy")
    assert t.latex().count(r"\begin{tabular}") == 2  # the 3 test columns, then the 4 means
    est = Est(93.44, 92.91, 93.96, 0.62, seeds=2)
    wide = Table("wide", "Wide", ["cap"], [Column("detector", align="l")]
                 + [Column(str(q), group="JPEG") for q in range(14)], [["d", *[est] * 14]],
                 pd.DataFrame())
    tex = wide.latex()
    n = check_latex(tex)
    assert n >= 2 and tex.count(r"{JPEG}") == n  # one group split, its header repeated
    # the value in one row, the rest of the cell's text in small type in the row under it
    assert re.search(r"\nd( & 93\.4)+ \\\\\n( & \{\\scriptsize \[92\.9, 94\.0\] \$\\pm\$0\.6\})+ "
                     r"\\\\\n", tex)
    assert tex.count("93.4") == 14
    assert "| d | 93.4 [92.9, 94.0] ±0.6 |" in wide.markdown()


# -- the paper ----------------------------------------------------------------------------

def test_published_figures_agree_with_each_other():
    e = {x["id"]: x for x in load_published(PUBLISHED)}
    sets = ["LDM", "ADM", "DDPM", "IDDPM", "PNDM", "SD14", "GLIDE"]
    acc = [e[f"acc_{s}"]["value"] for s in sets]
    f1 = [e[f"f1_{s}"]["value"] for s in sets]
    assert np.mean(acc) == pytest.approx(e["acc_mean7"]["value"], abs=0.005)
    assert np.mean(acc[1:]) == pytest.approx(e["acc_mean6_unseen"]["value"], abs=0.005)
    assert np.mean(f1) == pytest.approx(e["f1_mean7"]["value"], abs=0.005)
    assert e["acc_mean6_unseen"]["sets"] == e["acc_mean7"]["sets"][1:]
    tn = round(e["tnr_all"]["value"] * 100)  # of 10,000 reals
    for a, f in zip(acc, f1, strict=True):  # 10k fakes, 10k reals: tp from the accuracy
        tp = round(a * 200) - tn
        assert 200 * tp / (2 * tp + (10_000 - tn) + (10_000 - tp)) == pytest.approx(f, abs=0.01)
    for s in sets[:5]:
        assert e[f"auc_{s}"]["value"] == e[f"acc_{s}"]["value"]  # balanced: AUC(hard) = acc
    assert e["trainable_parameters"]["value"] == 32 * 2 * (16 * 2560 + 2560 * 16)
    assert {x["source"] for x in e.values()} <= {"paper", "authors' README", "derived"}


def test_paper_vs_reproduced_flags_inside_outside_and_not_run(run, tmp_path):
    d = run["dir"]
    metrics = pd.read_parquet(d / "metrics.parquet")
    draws = load_draws(d / "bootstrap.npz")
    rows = _positions(metrics, "bilora", "G1", ["G2"])
    point, lo, hi = (100 * x for x in mean_interval(draws, rows, metrics,
                                                     "accuracy", 0.95))
    entry = {"detector": "bilora", "train": "LDM", "metric": "accuracy", "source": "paper",
             "definition": "x"}
    pub = tmp_path / "pub.yaml"
    pub.write_text(json.dumps({"entries": [
        {**entry, "id": "in", "test": "ADM", "value": round(lo + 0.1, 2)},
        {**entry, "id": "out", "test": "ADM", "value": round(hi + 0.2, 2)},
        {**entry, "id": "gone", "test": "PNDM", "value": 99.0},
        {**entry, "id": "mean", "test": "mean", "sets": ["ADM", "DDPM"], "value": 50.0},
        {**entry, "id": "nodet", "detector": "nope", "test": "ADM", "value": 50.0},
        {**entry, "id": "params", "test": "-", "metric": "trainable_parameters",
         "value": 100},
        {**entry, "id": "rounded", "test": "-", "metric": "total_parameters", "value": 1100,
         "precision": 200}]}))
    published = {"file": str(pub), "map": {"LDM": "G1", "ADM": "G2", "DDPM": "G3"},
                 "comparable": False}
    t = paper_vs_reproduced(_ctx(run, published=published))
    r = t.data.set_index("id")
    assert r.loc["in", "inside"] is True and r.loc["out", "inside"] is False
    assert r.loc["in", "value"] == pytest.approx(point)
    assert r.loc["out", "difference"] == pytest.approx(point - round(hi + 0.2, 2))
    assert r.loc["gone", "status"] == "not run" and r.loc["nodet", "status"] == "not run"
    assert r.loc["mean", "tests"] == "G2;G3" and r.loc["mean", "inside"] is False
    assert r.loc["params", "inside"] is True and r.loc["rounded", "inside"] is True
    md = t.markdown()
    assert "NOT comparable" in md.splitlines()[0]
    assert "| stand-in (NOT comparable) |" in md
    assert re.search(r"\| gone \|.*\| not run \|.*\| test set\(s\) PNDM not in this run \|", md)
    assert "NOT comparable" in t.latex().split(r"\caption{")[1].split("\n")[0]
    t2 = paper_vs_reproduced(_ctx(run, published={**published, "comparable": True}))
    assert "NOT comparable" not in t2.markdown() and "| reproduced |" in t2.markdown()
    # the repository's file maps too: LDM -> G1 etc., IDDPM and the rest not run
    full = pd.read_csv(d / "tables" / "paper_vs_reproduced.csv").set_index("id")
    assert full.loc["acc_ADM", "status"] == "ok" and full.loc["acc_PNDM", "status"] == "not run"
    assert full.loc["trainable_parameters", "value"] == 100  # from the score metadata
    assert full.loc["acc_mean7", "status"] == "not run"


# -- data card ----------------------------------------------------------------------------

def test_data_card_counts_formats_and_old_manifests(run):
    card = pd.read_csv(run["dir"] / "tables" / "data_card.csv")
    new, old = card[card.dataset == "ds1"], card[card.dataset == "old"]
    real = new[new["class"] == "real"].set_index("generator")
    assert real.loc["G1", "images"] == 4 and real.loc["G1", "unique"] == 4
    # G1 and G2 share their reals: 12 rows, 8 distinct images
    assert real.loc["(all generators)", "images"] == 12
    assert real.loc["(all generators)", "unique"] == 8
    assert real.loc["G1", "formats"] == "JPEG:3;PNG:1"
    assert (real.loc["G1", "short_min"], real.loc["G1", "long_max"]) == (197, 303)
    assert (real.loc["G1", "quality_min"], real.loc["G1", "quality_max"]) == (71, 73)
    assert old["formats"].isna().all() and old["short_min"].isna().all()
    md = (run["dir"] / "tables" / "data_card.md").read_text()
    assert "| ds1 | test | real | G1 | 4 | 4 | JPEG 75%, PNG 25% | RGB | 197 / 198.5 / 200 |" \
        in md
    assert "| ds1 | test | fake | G1 | 4 | 4 | PNG | RGB | 256 / 256 / 256 | 256 / 256 / 256 " \
        "| - |" in md
    assert "| old | test | fake | G1 | 4 | 4 | n/a | n/a | n/a | n/a | n/a |" in md
    assert "Format bias" in md and "format_control" in md


def test_spec_errors_name_the_key(run, tmp_path):
    d = run["dir"]
    spec = make_spec()
    del spec["protocol"]
    with pytest.raises(UserError, match="lacks protocol"):
        render_report(d / "metrics.parquet", d / "bootstrap.npz", spec, tmp_path, tmp_path)
    bad = copy.deepcopy(make_spec())
    bad["variants"]["bilora@x=1"] = {"base": "bilora", "key": "x", "value": 1}
    with pytest.raises(UserError, match="bilora@x=1"):
        render_report(d / "metrics.parquet", d / "bootstrap.npz", bad, tmp_path, tmp_path)


def test_paper_vs_reproduced_sets_an_imported_detector_beside_the_retrained(run, tmp_path):
    """``published.imported``: published, imported and retrained side by side."""
    pub = tmp_path / "pub.yaml"
    entry = {"detector": "bilora", "train": "LDM", "metric": "accuracy", "source": "paper",
             "definition": "x"}
    pub.write_text(json.dumps({"entries": [{**entry, "id": "a", "test": "ADM", "value": 80.0}]}))
    published = {"file": str(pub), "map": {"LDM": "G1", "ADM": "G2"}, "comparable": True}
    plain = paper_vs_reproduced(_ctx(run, published=published))
    both = paper_vs_reproduced(_ctx(run, published={**published, "imported": "resnet50"}))
    r = both.data.set_index("id")
    alone = paper_vs_reproduced(_ctx(run, published={
        **published, "file": str(_retarget(pub, tmp_path, "resnet50"))})).data.set_index("id")
    assert r.loc["a", "imported_value"] == pytest.approx(alone.loc["a", "value"])
    assert r.loc["a", "value"] == plain.data.set_index("id").loc["a", "value"]
    header = both.markdown().splitlines()
    assert any(f"| published | {LABELS['resnet50']} | retrained |" in line for line in header)
    assert "| reproduced |" in plain.markdown()  # without it the table is as before


def _retarget(pub, tmp_path, det):
    doc = json.loads(pub.read_text())
    out = tmp_path / f"pub_{det}.yaml"
    out.write_text(json.dumps({"entries": [{**e, "detector": det} for e in doc["entries"]]}))
    return out


def test_preprocessing_table_from_the_scores_provenance(run, tmp_path):
    from bilora.report.context import read_preprocessing
    from bilora.report.tables import preprocessing

    table = pd.read_csv(run["dir"] / "tables" / "preprocessing.csv")
    assert table.detector.tolist() == list(LABELS)
    row = table.set_index("detector")
    assert row.loc["resnet50", "fit"] == "crop" and row.loc["resnet50", "size"] == 224
    assert row.loc["resnet50", "normalisation"] == "mean 0.485, 0.456, 0.406 / std 0.229, " \
                                                   "0.224, 0.225"
    assert json.loads(row.loc["bilora", "preprocessing"]) == PREPROCESSING["bilora"]
    assert pd.isna(row.loc["bilora@r=4", "fit"])  # scored before the record existed
    md = (run["dir"] / "tables" / "preprocessing.md").read_text()
    assert "| Bi-LoRA (test) [r=4] | n/a | n/a | n/a |" in md
    assert "| ResNet50 (test) | crop | 224 | mean 0.485, 0.456, 0.406 / std 0.229, 0.224, " \
           "0.225 |" in md
    # a small context: one detector without normalisation, the others not run
    ctx = _ctx(run)
    ctx.preprocessing = {"bilora": {"fit": "resize", "size": 32}}
    t = preprocessing(ctx)
    assert t.rows[0] == [LABELS["bilora"], "resize", "32", "none stated"]
    assert t.rows[1] == [LABELS["resnet50"], "n/a", "n/a", "n/a"]
    # two score files of one detector that disagree: the first shown, and a warning
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for path, size in ((a, 32), (b, 64)):
        frame = pa.table({"p_fake": [0.5]})
        pq.write_table(frame.replace_schema_metadata({
            b"detector": b"d", b"preprocessing": json.dumps({"fit": "resize",
                                                              "size": size}).encode()}), path)
    found, notices = read_preprocessing([a, b])
    assert found == {"d": {"fit": "resize", "size": 32}}
    assert len(notices) == 1 and "2 different preprocessings" in notices[0].message
    pq.write_table(pa.table({"p_fake": [0.5]}).replace_schema_metadata(
        {b"detector": b"d", b"preprocessing": b"{not json"}), a)
    with pytest.raises(UserError, match="a.parquet: metadata 'preprocessing' is not JSON"):
        read_preprocessing([a])


def test_cross_dataset_columns_pairing_and_format_audit(run, tmp_path):
    """Test generators of two datasets: the matrix groups its columns by dataset and adds
    a per-dataset unseen mean (checked against the mean over those cells), the detectors
    table a per-dataset column; the pairing table states each set's reals; the format
    audit names the dataset whose reals and fakes differ in format."""
    d = run["dir"]
    spec = make_spec(datasets={"G1": "ricker", "G2": "ricker", "G3": "synthbuster"})
    render_report(d / "metrics.parquet", d / "bootstrap.npz", spec, tmp_path / "t",
                  tmp_path / "f", run["manifests"], run["scores"], None)
    m = pd.read_csv(tmp_path / "t" / "accuracy_matrix_bilora.csv")
    ctx = _ctx(run, datasets=spec["datasets"])
    for train, sets in (("G1", ["G2"]), ("G2", ["G1"])):
        row = m[(m.train == train) & (m.column == "mean (unseen, ricker)")]
        assert row["sets"].item() == ";".join(sets)
        want = ctx.results.mean("accuracy", "bilora", [train], sets)
        assert row["value"].item() == pytest.approx(want.value)
    g3 = m[(m.train == "G1") & (m.column == "mean (unseen, synthbuster)")]
    assert g3["value"].item() == pytest.approx(m[(m.train == "G1") & (m.column == "G3")]
                                              ["value"].item())
    assert set(m.loc[m.kind == "test", "dataset"]) == {"ricker", "synthbuster"}
    tex = (tmp_path / "t" / "accuracy_matrix_bilora.tex").read_text()
    assert "test generator (ricker)" in tex and "test generator (synthbuster)" in tex
    det = pd.read_csv(tmp_path / "t" / "detectors.csv")
    assert {"unseen, ricker", "unseen, synthbuster"} <= set(det["cells"])
    pairing = pd.read_csv(tmp_path / "t" / "pairing.csv").set_index("generator")
    # two manifests (ds1, old) list the same 4 fakes and 4 reals per generator
    assert pairing.loc["G1", "dataset"] == "ricker" and pairing.loc["G1", "reals"] == 4
    assert pairing.loc["G1", "same_reals_as"] == "G2"
    assert pairing.loc["G3", "same_reals_as"] == "-"
    assert pairing.loc["G3", "real_set"] == "own reals"
    assert pairing.loc["G1", "fake_formats"] == "PNG"
    md = (tmp_path / "t" / "pairing.md").read_text()
    assert "Format audit: ds1 test: reals 75% JPEG, fakes 100% PNG" in md
    # one dataset: no per-dataset means, the old column group
    single = pd.read_csv(d / "tables" / "accuracy_matrix_bilora.csv")
    assert set(single["column"]) == {"G1", "G2", "G3", "mean (unseen)", "mean (all)",
                                     "mean (unseen, train sets)", "mean (all, train sets)"}


def test_pairing_says_every_other_set_when_all_share_their_reals(run):
    """Three test sets scored against one real set: 'every other test set', not a list."""
    from bilora.report.data_card import pairing

    shared = frozenset({"r0", "r1"})
    ctx = _ctx(run, real_sets={g: "shared reals" for g in TEST})
    ctx.real_sets = {g: ("shared reals", 2, shared) for g in TEST}
    rows = pd.DataFrame([{"dataset": "ds", "split": "test", "label": lab, "generator": g,
                          "sha1": f"{g}{i}" if lab else f"r{i}", "format": "PNG"}
                         for g in TEST for lab in (0, 1) for i in range(2)])
    frame = pairing(ctx, rows).data.set_index("generator")
    assert (frame["same_reals_as"] == "every other test set").all()
    assert (frame["reals"] == 2).all() and (frame["fakes"] == 2).all()


def test_calibration_table_counts_answers_and_pools_each_models_test_sets(run):
    from bilora.metrics import compute

    cal = pd.read_csv(run["dir"] / "tables" / "calibration.csv")
    done = cal.dropna(subset=["n"])
    assert len(done) and (done["said_fake"] + done["said_real"] + done["other"]
                          == done["n"]).all()
    # the one file with unanswered images (bilora, G2, seed 1: 3 NaN fakes of G1, clean)
    other = done.set_index(["detector", "train", "seed"])["other"]
    assert other.loc[("bilora", "G2", 1)] == 3 and other.drop(("bilora", "G2", 1)).eq(0).all()
    # ECE and Brier equal those of the model's clean images of every test set put together
    path = next(p for p in run["scores"] if p.name == "scores_resnet50_G1_1.parquet")
    df = pd.read_parquet(path)
    clean = df[(df["perturbation"] == "none") & df["generator"].isin(TEST)]
    want = compute(clean["label"].to_numpy(), clean["p_fake"].to_numpy())
    row = done.set_index(["detector", "train", "seed"]).loc[("resnet50", "G1", 1)]
    assert row["ece"] == pytest.approx(want["ece"], abs=1e-5)  # the csv keeps 6 digits
    assert row["brier"] == pytest.approx(want["brier"], abs=1e-5)
    assert 0 < row["ece"] < 1
    assert (run["dir"] / "figures" / "calibration.png").exists()


def test_metrics_without_calibration_bins_say_how_to_fill_them(run, tmp_path):
    from bilora.metrics import CAL_COLUMNS

    d = run["dir"]
    old = pd.read_parquet(d / "metrics.parquet").drop(columns=CAL_COLUMNS)
    old.to_parquet(tmp_path / "metrics.parquet")
    render_report(tmp_path / "metrics.parquet", d / "bootstrap.npz", run["spec"],
                  tmp_path / "tables", tmp_path / "figures", run["manifests"], run["scores"],
                  d / "warnings.json")
    text = (tmp_path / "tables" / "calibration.md").read_text()
    assert "snakemake --forcerun compute_metrics" in text and "| n/a |" in text
