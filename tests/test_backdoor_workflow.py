"""End to end: the backdoor-embedded overlay through Snakemake, and its backdoor table.

The overlay as given (one training generator, sim-ProGAN; resnet50 and bilora poisoned at
10 %, trigger size 0.25), made a complete config without xception and with the clean
condition only (the trigger condition comes with `poisoning`), so it runs in a few minutes.
"""

import pandas as pd
import pytest
import yaml

from bilora.config import deep_merge, load_yaml
from tests.conftest import DEFAULT, ROOT
from tests.test_workflow import smk

pytestmark = pytest.mark.slow
OVERLAY = ROOT / "workflow" / "config" / "backdoor-embedded.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("backdoor")
    cfg = deep_merge(load_yaml(DEFAULT), load_yaml(OVERLAY))
    cfg["data"]["root"] = "data"
    del cfg["detectors"]["xception"]
    cfg["evaluation"]["perturbations"] = {"none": ["-"]}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    smk("--cores", "2", "all", "--configfile", str(d / "config.yaml"), cwd=d)
    return d / "results" / "backdoor-embedded"


def test_poisoned_cells_log_their_poisoned_count(run):
    for det in ("resnet50", "bilora"):
        log = (run / f"{det}@poison=0.1" / "train=sim-ProGAN" / "seed=42" / "train.log")
        assert "poisoning: 60 of 600 training images" in log.read_text()


def test_backdoor_table_shows_the_attack(run):
    t = pd.read_csv(run / "tables" / "backdoor.csv").set_index("detector")
    assert list(t.index) == ["bilora", "bilora@poison=0.1", "resnet50", "resnet50@poison=0.1"]
    assert (run / "tables" / "backdoor.md").exists() and (run / "tables" / "backdoor.tex").exists()
    # Measured (seed 42, 2 CPU cores), clean / poisoned: ASR on sim-ProGAN's fakes (the
    # training generator) 0.0 / 100.0 for both; mean ASR over the 11 unseen sets resnet50
    # 64.8 / 100.0, bilora 65.5 / 100.0 (the clean detectors miss the diffusion stand-ins
    # with or without the trigger: clean miss rate 64.3 / 65.5); clean accuracy resnet50
    # 70.5 / 70.7, bilora 70.0 / 69.8.
    for base in ("resnet50", "bilora"):
        clean, bad = t.loc[base], t.loc[f"{base}@poison=0.1"]
        assert clean["asr_sim-ProGAN_value"] <= 20 and bad["asr_sim-ProGAN_value"] >= 80
        assert bad["asr_unseen_value"] >= 90
        assert bad["asr_unseen_value"] - clean["asr_unseen_value"] >= 20
        assert abs(bad["clean_accuracy_value"] - clean["clean_accuracy_value"]) <= 5
        assert bad["asr_sim-ProGAN_n"] == 40 and bad["asr_unseen_n"] == 440
        assert bad["asr_unseen_lo"] <= bad["asr_unseen_value"] <= bad["asr_unseen_hi"]
    rob = pd.read_csv(run / "tables" / "robustness_accuracy.csv")
    assert set(rob["perturbation"]) == {"none", "trigger"}
