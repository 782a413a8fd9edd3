"""LoRA targets resolved per base (bilora/kinds/bilora/targets.py): PEFT's own matching, kept
to the language model unless ``lora.scope: all``; a bad list is a ConfigError naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import yaml

from bilora.errors import ConfigError
from bilora.kinds.bilora import base_of
from bilora.kinds.bilora.detector import BiLoRADetector, lora_module_names
from bilora.kinds.bilora.targets import resolve_targets
from tests.conftest import ROOT


@pytest.fixture()
def section(default_cfg) -> dict:
    return copy.deepcopy(default_cfg["detectors"]["bilora"])


def meta_base(section: dict):
    base = base_of(section)
    with torch.device("meta"):
        return base.model_class()(base.meta_config(section["base_model"]))


def adapted(section: dict) -> list[str]:
    """The modules PEFT actually wraps, as names of the unwrapped base."""
    from peft import get_peft_model

    from bilora.kinds.bilora.detector import lora_config

    with torch.device("meta"):
        model = get_peft_model(meta_base(section), lora_config(section))
    return [n.removeprefix("base_model.model.") for n in lora_module_names(model)]


def test_the_papers_targets_are_the_opt_attention_only(section):
    layers = section["base_model"]["tiny"]["text_layers"]
    hits = resolve_targets(meta_base(section), section)
    assert len(hits) == 2 * layers  # q_proj and k_proj per decoder layer
    assert all(h.startswith("language_model.") for h in hits)
    assert sorted(hits) == sorted(adapted(section))  # what PEFT wraps, no more, no less


def test_a_target_also_in_the_vision_tower_is_refused_unless_scope_all(section):
    section["lora"]["target_modules"] = ["q_proj", "fc1"]  # BLIP-2's ViT MLP has an fc1 too
    with pytest.raises(ConfigError, match=r"^lora\.target_modules: .*outside the BLIP-2 "
                       r"language model.*vision_model\.encoder\.layers\.0\.mlp\.fc1.*"
                       r"lora\.scope: all"):
        resolve_targets(meta_base(section), section)
    section["lora"]["scope"] = "all"
    hits = resolve_targets(meta_base(section), section)
    assert any(h.startswith("vision_model.") for h in hits)
    assert sorted(hits) == sorted(adapted(section))


def test_targets_that_match_nothing_name_the_language_models_layers(section):
    section["lora"]["target_modules"] = ["q", "k"]  # a T5 language model's names
    with pytest.raises(ConfigError, match=r"^lora\.target_modules: \['q', 'k'\] match no "
                       r"module of the BLIP-2 base; .*named .*k_proj.*q_proj"):
        resolve_targets(meta_base(section), section)


def test_build_refuses_before_adapting_and_the_cli_names_file_and_key(section, tiny_base,
                                                                     tmp_path):
    section["lora"]["target_modules"] = ["fc2"]  # also in the ViT
    with pytest.raises(ConfigError, match="outside the BLIP-2 language model"):
        BiLoRADetector.build(section, seed=0, base_dir=str(tiny_base))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"detectors": {"bilora": {"lora": {
        "target_modules": ["fc2"]}}}}))
    out = subprocess.run([sys.executable, "-m", "bilora.cli", "describe", "--configfile",
                          str(overlay), "--detector", "bilora"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert f"{overlay}: detectors.bilora: lora.target_modules: ['fc2'] also match" \
        in out.stderr
    ok = subprocess.run([sys.executable, "-m", "bilora.cli", "describe", "--detector", "bilora"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "(the language model only: language_model):" in ok.stdout


def test_targets_only_inside_a_module_trained_whole_say_so(section):
    assert "qformer" in section["extra_trainable"]  # the embedded default trains it whole
    section["lora"]["target_modules"] = ["dense"]  # the Q-Former's only
    with pytest.raises(ConfigError, match=r"match only modules inside extra_trainable "
                       r"\(qformer, language_projection\)"):
        resolve_targets(meta_base(section), section)
