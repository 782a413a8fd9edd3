"""Seeds and an ablation sweep as axes of the cell matrix, end to end on a trimmed config."""

import pandas as pd
import pytest
import yaml

from tests.conftest import DEFAULT, ROOT
from tests.test_workflow import job_counts, smk

pytestmark = pytest.mark.slow
GENS = ["sim-ProGAN", "sim-LDM"]


def _base():
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["run"] = "abl"
    cfg["data"]["root"] = "data"
    cfg["data"]["datasets"]["procedural"].update(generators=GENS, train_per_class=64,
                                                 test_per_class=16)
    cfg["generators"] = {"train": GENS, "test": GENS}
    cfg["detectors"] = {"bilora": cfg["detectors"]["bilora"]}
    cfg["detectors"]["bilora"]["train"]["epochs"] = 3
    cfg["evaluation"]["perturbations"] = {"none": ["-"], "jpeg": [50]}
    cfg["report"]["published"] = None
    return cfg


def test_new_seeds_and_variants_add_only_their_cells(tmp_path):
    base = _base()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(base))
    smk("--cores", "2", "all", "--configfile", str(tmp_path / "a.yaml"), cwd=tmp_path)
    wider = {**base, "seeds": [42, 43], "ablations": {"bilora": {"lora.r": [4, 16]}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(wider))
    dry = smk("-n", "all", "--configfile", str(tmp_path / "b.yaml"), cwd=tmp_path)
    counts = job_counts(dry.stdout)
    # new: bilora seed 43 (2 cells) and bilora@r=4 at seeds 42 and 43 (4 cells); the two
    # seed-42 bilora cells are neither retrained nor rescored
    assert counts["train_detector"] == 6, counts
    # the group's job runs again (new adapters join it) and every cell's file is re-gathered,
    # but the two finished cells' scores are reused, not recomputed (checked in its log)
    assert counts["gather_scores"] == 8 and "make_procedural_dataset" not in counts
    assert "build_base_model" not in counts  # the variant shares the base: built once
    smk("--cores", "2", "all", "--configfile", str(tmp_path / "b.yaml"), cwd=tmp_path)
    res = tmp_path / "results" / "abl"
    (group_log,) = (res / "groups").glob("*/chunk0.log")
    assert "none=-: 6 adapters scored, 2 reused" in group_log.read_text()
    assert (res / "bilora@r=4" / "train=sim-LDM" / "seed=43" / "scores.parquet").exists()
    ablation = pd.read_csv(res / "tables" / "ablation.csv", dtype={"value": str})
    params = ablation.set_index("value")["trainable"]
    assert params.loc["4"] < params.loc["16"]  # rank 4 trains fewer LoRA parameters
    matrix = pd.read_csv(res / "tables" / "accuracy_matrix_bilora.csv")
    assert (matrix.seeds == 2).all() and matrix.seed_sd.notna().any()
    assert (res / "figures" / "ablation.png").exists()


def test_the_shipped_rank_overlay_makes_the_sweep_cells(tmp_path):
    out = smk("-n", "all", "--configfile", str(ROOT / "workflow/config/ablation-rank.yaml"),
              cwd=tmp_path)
    counts = job_counts(out.stdout)
    # 3 detectors + 1 variant, 2 training generators, 2 seeds
    assert counts["train_detector"] == 4 * 2 * 2
    assert "results/ablation-rank/bilora@r=4/train=sim-LDM/seed=43/model" in out.stdout
