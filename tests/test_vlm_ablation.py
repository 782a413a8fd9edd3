"""Bi-LoRA on another VLM base as a named ablation sweep (``ablations: {bilora: {base:
{<name>: {<dotted key>: value}}}}``): the variants, their sections and report values, bad
input, and the ablation-vlm-embedded overlay end to end."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import yaml

from bilora import config as C
from bilora import workflow as W
from bilora.config import deep_merge, load_yaml
from bilora.errors import ConfigError
from tests.conftest import DEFAULT, ROOT
from tests.test_workflow import smk

OVERLAY = ROOT / "workflow" / "config" / "ablation-vlm-embedded.yaml"
VID = "bilora@base=vit-gpt2"


def overlay_cfg() -> dict:
    return deep_merge(load_yaml(DEFAULT), load_yaml(OVERLAY))


def test_a_named_sweep_replaces_the_named_keys_only():
    cfg = C.validate(overlay_cfg())
    dets = C.detectors(cfg)
    base, variant = dets["bilora"], dets[VID]
    assert variant["base_model"]["model_type"] == "vision-encoder-decoder"
    assert "qformer_width" not in variant["base_model"]["tiny"]  # replaced, not merged
    assert variant["lora"]["target_modules"] == ["c_attn"]
    assert variant["lora"]["r"] == base["lora"]["r"] and variant["captions"] == base["captions"]
    assert variant["extra_trainable"] == [] and base["extra_trainable"]
    assert variant["train"] == base["train"] and "label" not in variant
    assert C.variants(cfg)[VID] == {"base": "bilora", "key": "base", "value": "vit-gpt2",
                                    "named": True, "base_name": "blip-2",
                                    "label": "Bi-LoRA (tiny random ViT-GPT2)"}
    assert C.report_spec(cfg)["variants"][VID]["base_value"] == "blip-2"
    assert C.labels(cfg)[VID] == "Bi-LoRA (tiny random ViT-GPT2)"  # the entry's own label
    del cfg["ablations"]["bilora"]["base"]["vit-gpt2"]["label"]
    assert C.labels(C.validate(cfg))[VID] == "Bi-LoRA (tiny random BLIP-2) [base=vit-gpt2]"
    assert {c.detector for c in C.cells(cfg)} == {"bilora", VID, "resnet50", "xception"}


def test_named_sweep_bad_input_names_the_key():
    cfg = overlay_cfg()
    sweep = cfg["ablations"]["bilora"]["base"]
    sweep["also-blip2"] = None  # two entries naming the detector itself
    with pytest.raises(ConfigError, match=r"ablations\.bilora\.base: blip-2, also-blip2 are "
                       "all null"):
        C.validate(copy.deepcopy(cfg))
    del sweep["also-blip2"]
    sweep["vit-gpt2"]["loar.r"] = 4  # a parent key the section lacks
    with pytest.raises(ConfigError, match=r"ablations\.bilora\.base\.vit-gpt2: 'loar' is not "
                       "a key"):
        C.validate(copy.deepcopy(cfg))
    del sweep["vit-gpt2"]["loar.r"]
    sweep["vit-gpt2"]["base_model"]["model_type"] = "no-such-vlm"
    with pytest.raises(ConfigError, match="no-such-vlm"):
        C.validate(copy.deepcopy(cfg))
    sweep["vit-gpt2"]["base_model"]["model_type"] = "vision-encoder-decoder"
    sweep["vit-gpt2"]["extra_trainable"] = ["qformer"]  # a BLIP-2 part, not a ViT-GPT2 one
    with pytest.raises(ConfigError, match=r"^detectors\.bilora@base=vit-gpt2\.extra_trainable: "
                       r"\['qformer'\] are not parts of a ViT-GPT2 base; known: encoder"):
        W.check_models(C.validate(copy.deepcopy(cfg)))  # at DAG build, as the Snakefile does


@pytest.mark.slow
def test_the_overlay_runs_and_reports_one_row_per_base(tmp_path):
    """The overlay as given, made complete with Bi-LoRA alone, one training generator and
    clean images (measured: 42 s on 2 cores)."""
    cfg = overlay_cfg()
    cfg["data"]["root"] = "data"
    cfg["detectors"] = {"bilora": cfg["detectors"]["bilora"]}
    cfg["generators"]["train"] = ["sim-ProGAN"]
    cfg["evaluation"]["perturbations"] = {"none": ["-"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    smk("--cores", "2", "all", "--configfile", str(tmp_path / "config.yaml"), cwd=tmp_path)
    res = tmp_path / "results" / "ablation-vlm-embedded"
    cell = res / VID / "train=sim-ProGAN" / "seed=42"
    log = (cell / "train.log").read_text()
    assert "training from cached features: the deepest frozen point (vision)" in log
    t = pd.read_csv(res / "tables" / "ablation.csv").set_index("detector")
    assert list(t.index) == ["bilora", VID]
    assert t.loc["bilora", "value"] == "blip-2" and t.loc[VID, "value"] == "vit-gpt2"
    # LoRA r=16 on the one GPT-2 layer's c_attn: self-attention 32 -> 96 (q, k, v), the
    # cross-attention's 32 -> 64 (k, v; its q is q_attn)
    assert t.loc[VID, "trainable"] == 16 * (32 + 96) + 16 * (32 + 64)
    print(t[["value", "accuracy_unseen_value", "trainable"]])  # pytest -s
    # measured (seed 42): mean unseen accuracy BLIP-2 67.3, ViT-GPT2 67.7; own set 100 / 100
    for det in t.index:
        assert 55 <= t.loc[det, "accuracy_unseen_value"] <= 90
        assert t.loc[det, "accuracy_unseen_lo"] <= t.loc[det, "accuracy_unseen_value"]
    acc = pd.read_csv(res / "tables" / f"accuracy_matrix_{VID}.csv")
    assert (res / "figures" / "ablation.png").exists()
    assert len(acc) >= 1


def test_the_paper_scale_overlay_describes_and_sizes_vit_gpt2_offline():
    """``ablation-vlm.yaml`` after paper.yaml: the variant's architecture ships with the
    package, so describe and job sizing need no download."""
    from bilora import resources as R
    from bilora.describe import describe

    cfg = C.validate(deep_merge(load_yaml(ROOT / "workflow/config/paper.yaml"),
                                load_yaml(ROOT / "workflow/config/ablation-vlm.yaml")))
    W.check_models(cfg)
    assert {c.detector for c in C.cells(cfg)} >= {"bilora", VID}
    lines = describe(C.detectors(cfg)[VID])
    # GPT-2 small, 12 layers, r 16: c_attn 768 -> 2304 and the cross-attention's 768 -> 1536
    assert "trainable parameters: 1,032,192 (0.430 %)" in lines
    assert "total parameters: 240,228,096" in lines
    assert "on 24 modules (the language model only: decoder):" in lines[3]
    wc = {"detector": VID, "generator": "LDM"}
    vit, blip = (R.rule_resources(cfg, "train_detector", w)
                 for w in (wc, {**wc, "detector": "bilora"}))
    assert vit["gpu"] == 1 and vit["runtime"] < blip["runtime"] / 2  # measured 295 vs 1235 min
