import copy

import pytest
import yaml

from bilora import config as C
from tests.conftest import DEFAULT, PAPER


def test_default_and_paper_configs_are_valid(default_cfg):
    paper = C.load(PAPER, DEFAULT)
    assert default_cfg["run"] == "embedded" and paper["run"] == "paper"
    assert len(paper["generators"]["train"]) == 7 and len(paper["generators"]["test"]) == 12


def _leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def test_paper_run_resolves_to_exactly_the_paper_file():
    """A complete config is not merged with the default: nothing leaks in. What it does not
    set comes from the schema's defaults, never from default.yaml."""
    given = yaml.safe_load(PAPER.read_text())
    resolved = C.load(PAPER, DEFAULT)
    # the default file is never read for a complete config
    assert C.resolve(copy.deepcopy(given), "/nonexistent/default.yaml") == resolved
    ours = dict(_leaves(resolved))
    for path, value in _leaves(given):
        assert ours[path] == value, path
    assert set(ours) > set(dict(_leaves(given)))  # the schema fills some defaults in
    # default.yaml's small in-family variant does not leak into the paper's ResNet50
    assert resolved["detectors"]["resnet50"]["model_kwargs"] == {}
    assert resolved["data"]["max_rejected_fraction"] == 0.01  # default.yaml says 0.0


def test_paper_setup_is_the_papers():
    bl = yaml.safe_load(PAPER.read_text())["detectors"]["bilora"]
    assert bl["base_model"] == {"source": "pretrained", "name_or_path": "Salesforce/blip2-opt-2.7b"}
    assert bl["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05,
                          "target_modules": ["q_proj", "k_proj"], "bias": "none"}
    assert bl["extra_trainable"] == []
    assert bl["train"] == {"epochs": 20, "batch_size": 32, "lr": 5e-5, "optimizer": "adam",
                           "weight_decay": 0.0}
    p = yaml.safe_load(PAPER.read_text())
    assert p["seed"] == 42
    pert = p["evaluation"]["perturbations"]
    assert pert["noise"][:4] == [5, 10, 15, 20] and pert["blur"][:4] == [3, 5, 7, 9]
    assert pert["jpeg"][:4] == [75, 50, 30, 10] and pert["crop"][:4] == [0.05, 0.10, 0.15, 0.20]
    assert pert["downscale"] == [112] and pert["mixed"] == ["random"]


def test_partial_config_is_an_overlay_on_the_default(default_cfg):
    cfg = C.resolve({"run": "abl", "seed": 7,
                     "detectors": {"resnet50": {"train": {"epochs": 5}}}}, DEFAULT)
    assert cfg["run"] == "abl" and cfg["seed"] == 7
    assert cfg["generators"] == default_cfg["generators"]
    assert cfg["detectors"]["resnet50"]["train"]["epochs"] == 5
    assert cfg["detectors"]["resnet50"]["train"]["lr"] == \
        default_cfg["detectors"]["resnet50"]["train"]["lr"]


@pytest.mark.parametrize("mutate, expect", [
    (lambda c: c["detectors"]["bilora"]["lora"].update(rank=4), "detectors.bilora.lora"),
    (lambda c: c["detectors"]["bilora"]["lora"].update(r="16"), "detectors.bilora.lora.r"),
    (lambda c: c["evaluation"]["perturbations"].update(jpg=[50]), "evaluation.perturbations"),
    (lambda c: c.update(sede=1), "sede"),
    (lambda c: c["data"].update(num_workers=-1), "data.num_workers"),
    (lambda c: c["detectors"]["resnet50"].update(kind="vit"), "detectors.resnet50.kind"),
])
def test_bad_key_or_type_names_the_key(cfg, mutate, expect):
    mutate(cfg)
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg, "my.yaml")
    assert expect in str(err.value) and "my.yaml" in str(err.value)


def test_misspelt_key_lists_the_known_keys(cfg):
    cfg["detectors"]["bilora"]["lora"]["alpah"] = 32
    with pytest.raises(C.ConfigError, match=r"unknown key\(s\) \['alpah'\].*alpha"):
        C.validate(cfg)


def test_generator_without_dataset_is_an_error(cfg):
    cfg["generators"]["test"].append("sim-Midjourney")
    with pytest.raises(C.ConfigError, match="generators.test: 'sim-Midjourney'"):
        C.validate(cfg)


def test_slices_only_hold_their_detector(cfg):
    a = C.train_spec(cfg, "resnet50", "sim-LDM", 42)
    cfg2 = copy.deepcopy(cfg)
    cfg2["detectors"]["xception"]["train"]["lr"] = 0.5
    assert C.train_spec(cfg2, "resnet50", "sim-LDM", 42) == a
    assert C.train_spec(cfg2, "xception", "sim-LDM", 42) != C.train_spec(cfg, "xception",
                                                                         "sim-LDM", 42)
