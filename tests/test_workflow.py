"""End to end: Snakemake on a trimmed config in a temporary folder, reruns, lint, paper DAG."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import DEFAULT, PAPER, ROOT

pytestmark = pytest.mark.slow
GENS = ["sim-ProGAN", "sim-LDM"]


def smk(*args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                          "--directory", str(cwd), *args], capture_output=True, text=True,
                         env=env, timeout=900)
    if check and out.returncode:
        raise AssertionError(out.stdout[-4000:] + out.stderr[-4000:])
    return out


def job_counts(text):
    block = text[text.index("Job stats:"):]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", block, re.M)
            if m[0] != "total"}


def trimmed():
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["run"] = "e2e"
    cfg["data"]["root"] = "data"
    ds = cfg["data"]["datasets"]["procedural"]
    ds.update(generators=GENS + ["sim-ADM"])
    cfg["generators"] = {"train": GENS, "test": GENS + ["sim-ADM"]}
    cfg["evaluation"]["perturbations"] = {"none": ["-"], "jpeg": [50], "mixed": ["random"]}
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    (d / "config.yaml").write_text(yaml.safe_dump(trimmed()))
    smk("--cores", "2", "all", "--configfile", str(d / "config.yaml"), cwd=d)
    return d


def test_all_tables_and_figures_are_written(run):
    res = run / "results" / "e2e"
    for det in ("bilora", "resnet50", "xception"):
        for ext in ("csv", "md", "tex"):
            assert (res / "tables" / f"accuracy_matrix_{det}.{ext}").exists()
        assert (res / "figures" / f"heatmap_{det}.pdf").exists()
        for g in GENS:
            assert (res / det / f"train={g}" / "seed=42" / "model" / "detector.json").exists()
            assert not (res / det / f"train={g}" / "seed=42" / "checkpoint").exists()
    for name in ("detectors", "robustness_accuracy", "paper_vs_reproduced", "data_card"):
        assert (res / "tables" / f"{name}.md").exists()
    assert "not comparable" in (res / "tables" / "paper_vs_reproduced.md").read_text().lower()
    assert (res / "figures" / "robustness.png").stat().st_size > 10_000


def test_every_detector_learns_its_training_generator(run):
    """Measured on two 2-core machines: 0.96-1.0 for every detector on its own generator
    (the ResNet50 variant 0.96-1.0 over 10 seeds since its cosine schedule and flips; it
    was 0.875-1.0 before). 0.9 leaves 5 of 80 images of margin."""
    m = pd.read_csv(run / "results" / "e2e" / "metrics.csv")
    seen = m[(m.train == m.test) & (m.perturbation == "none")]
    assert len(seen) == 3 * len(GENS)
    assert (seen.accuracy >= 0.9).all(), seen[["detector", "train", "accuracy"]]
    assert (seen.auc >= 0.95).all(), seen[["detector", "train", "auc"]]  # measured >= 0.99
    t = pd.read_csv(run / "results" / "e2e" / "tables" / "accuracy_matrix_bilora.csv")
    diag = t[(t.kind == "test") & (t.train == t.column)]
    assert len(diag) == len(GENS) and (diag.value >= 90).all()


def test_scores_carry_provenance(run):
    import pyarrow.parquet as pq

    meta = pq.read_schema(run / "results/e2e/bilora/train=sim-LDM/seed=42/scores.parquet"
                          ).metadata
    for key in (b"bilora_version", b"git_commit", b"config_hash", b"data_manifest_sha1",
                b"detector", b"train", b"seed", b"parameters"):
        assert meta.get(key), key


def test_attack_views_and_transfer_fingerprints(run):
    import hashlib

    import pyarrow.parquet as pq

    res = run / "results" / "e2e"
    for name in ("attacks", "attack_transfer"):
        for ext in ("csv", "md", "tex"):
            assert (res / "tables" / f"{name}.{ext}").stat().st_size > 200, (name, ext)
    assert (res / "figures" / "attacks.png").stat().st_size > 10_000
    table = pd.read_csv(res / "tables" / "attacks.csv")
    assert set(table["detector"]) == {"bilora", "resnet50", "xception"}
    assert set(table["attack"]) == {"none", "fgsm", "pgd"}
    source = res / "resnet50/train=sim-LDM/seed=42/attack/scores.parquet"
    for target in ("bilora", "xception"):
        path = res / f"{target}/train=sim-LDM/seed=42/transfer.parquet"
        meta = pq.read_schema(path).metadata
        sources = json.loads(meta[b"sources"])
        assert sources == {"resnet50": hashlib.sha1(source.read_bytes()).hexdigest()}
        got, src = pd.read_parquet(path), pd.read_parquet(source)
        assert set(got["image_sha1"]) == set(src["image_sha1"])
    # every attacked image stays within its eps in uint8 pixels
    src = pd.read_parquet(source)
    assert (src["linf"] <= (src["eps"] * 255 + 1e-6).astype(int)).all()
    assert src.loc[src["attack"] == "pgd", "linf"].max() == 8


def test_changing_one_detector_reruns_its_cells_and_the_report_only(run):
    cfg = trimmed()
    cfg["detectors"]["resnet50"]["train"]["lr"] = 5e-4
    (run / "changed.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-n", "all", "--configfile", str(run / "changed.yaml"), cwd=run)
    # the embedded attack grid attacks the sim-LDM cells and hands resnet50's images to the
    # other two: its new attack is scored again by them (transfer), nothing else of theirs
    assert job_counts(out.stdout) == {"train_detector": 2, "score_cell": 2, "compute_metrics": 1,
                                      "collect_warnings": 1, "render_report": 1,
                                      "attack_cell": 1, "transfer_cell": 2,
                                      "render_attack_report": 1, "all": 1}
    plan = out.stdout.split("Job stats")[0]
    for kept in ("xception/train=sim-LDM/seed=42/model", "xception/train=sim-ProGAN",
                 "xception/train=sim-LDM/seed=42/attack\n"):
        assert f"output: results/e2e/{kept}" not in plan, kept
    same = smk("-n", "all", "--configfile", str(run / "config.yaml"), cwd=run)
    assert "Nothing to be done" in same.stdout + same.stderr


def test_renaming_a_label_reruns_only_the_report(run):
    cfg = trimmed()
    cfg["detectors"]["resnet50"]["label"] = "ResNet-50, renamed for the camera-ready"
    (run / "label.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-n", "all", "--configfile", str(run / "label.yaml"), cwd=run)
    assert job_counts(out.stdout) == {"render_report": 1, "render_attack_report": 1, "all": 1}


def test_one_cell_reruns_alone_with_byte_identical_scores(run):
    """Same machine, same seed: a cell scored again gives the same float32 bytes."""
    cell = run / "results/e2e/xception/train=sim-LDM/seed=42/scores.parquet"
    before = pd.read_parquet(cell)
    cell.unlink()
    out = smk("--cores", "2", "results/e2e/xception/train=sim-LDM/seed=42/scores.parquet",
              "--configfile", str(run / "config.yaml"), cwd=run)
    assert job_counts(out.stdout + out.stderr) == {"score_cell": 1}
    after = pd.read_parquet(cell)
    assert after.p_fake.to_numpy().tobytes() == before.p_fake.to_numpy().tobytes()
    pd.testing.assert_frame_equal(after, before)


def test_lint_is_clean():
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


def test_paper_dry_run_has_21_training_jobs_fed_by_the_data_jobs(tmp_path):
    out = smk("-n", "all", "--configfile", str(PAPER), "--printshellcmds", cwd=tmp_path)
    counts = job_counts(out.stdout)
    genimage = [line for line in out.stdout.splitlines()
                if "bilora.cli organize" in line and "--layout genimage" in line]
    # SD v1.4 and GLIDE are scored against the shared LSUN test reals, 10k fakes each
    assert len(genimage) == 2 and all(
        "--test-reals-from data/paper/ricker/manifest.parquet" in line
        and "--test-fakes-per-generator 10000" in line for line in genimage)
    # 14 baseline cells scored alone; the 7 Bi-LoRA cells share one image pass per condition
    assert counts["train_detector"] == 21 and counts["score_cell"] == 14
    # the authors' 7 adapters are imported, not trained, and scored in a group of their own
    assert counts["import_checkpoint"] == 7
    # the 23 conditions of each group split over evaluation.group_jobs = 8 jobs
    assert counts["score_group"] == 2 * 8 and counts["gather_scores"] == 2 * 7
    assert counts["prefetch_models"] == 1
    assert counts["fetch_zenodo_record"] == 1 and counts["rebuild_lsun_real"] == 1
    assert counts["organize_dataset"] == 3 and counts["extract_archives"] == 1


def test_paper_dry_run_with_archives_at_hand_downloads_nothing(tmp_path):
    cfg = yaml.safe_load(PAPER.read_text())
    cfg["data"]["datasets"]["ricker"]["archives_dir"] = str(tmp_path / "have")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-n", "all", "--configfile", str(tmp_path / "p.yaml"), "--printshellcmds",
              cwd=tmp_path)
    fetch = [line for line in out.stdout.splitlines() if "bilora.cli fetch-zenodo" in line]
    assert fetch and all(f"--archives-dir {tmp_path / 'have'}" in line for line in fetch)


def test_unknown_timm_model_fails_at_dag_build_naming_the_key(tmp_path):
    cfg = trimmed()
    cfg["detectors"]["resnet50"]["model_name"] = "resnet5000"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-n", "all", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path,
              check=False)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "detectors.resnet50.model_name: 'resnet5000' is not a timm model" in said
    assert "similar: resnet50," in said  # the closest registered name comes first
    assert not (tmp_path / "data").exists()  # failed before any job ran


def test_misspelt_key_fails_at_dag_build_naming_it(tmp_path):
    cfg = copy.deepcopy(trimmed())
    cfg["detectors"]["bilora"]["lora"]["alpah"] = 32
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-n", "all", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path,
              check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "detectors.bilora.lora" in text and "alpah" in text


def test_snakemake_report_is_rendered(run):
    smk("--report", str(run / "report.html"), "--configfile", str(run / "config.yaml"), cwd=run)
    html = (run / "report.html").read_text(errors="replace")
    assert "heatmap_bilora" in html and "accuracy_matrix_xception" in html
    assert "attack_transfer" in html
