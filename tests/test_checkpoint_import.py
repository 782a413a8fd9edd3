"""Cells from released checkpoints: the authors' PEFT 0.4/0.5 adapter folders imported
over the tiny base, bad inputs refused, config checks, and the rule that makes such cells."""

import copy
import json
import shutil

import pytest
import torch
import yaml

from bilora import config as C
from bilora import workflow as W
from bilora.cli import main
from bilora.errors import ConfigError
from tests.miniworld import AUTHORS_CONFIG, authors_lora, write_authors_adapter


def _lora(tiny_base):
    """The tiny base wrapped by a current-PEFT LoRA with random (non-zero) weights."""
    return authors_lora(tiny_base, seed=7)


@pytest.fixture(scope="module")
def authors_adapter(tiny_base, tmp_path_factory):
    """An adapter folder exactly in the authors' form: adapter_model.bin (torch.save, keys
    without an adapter name), their adapter_config.json, no processor."""
    folder = write_authors_adapter(tmp_path_factory.mktemp("authors") / "ldmFineTune",
                                   tiny_base, seed=7)
    state = torch.load(folder / "adapter_model.bin")
    assert all(".default." not in k for k in state)
    assert any(".language_model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight" in k
               for k in state)  # transformers 5's BLIP-2 keeps PEFT 0.4's key layout
    return folder


def section(default_cfg, source, gen="sim-LDM"):
    sec = copy.deepcopy(default_cfg["detectors"]["bilora"])
    sec["extra_trainable"] = []
    del sec["train"]  # an imported detector needs no training recipe
    sec["weights"] = {"from": "checkpoints", "checkpoints": {gen: str(source)}}
    return sec


def run_import(default_cfg, tiny_base, source, out):
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"]["authors"] = section(default_cfg, source)
    C.validate(cfg)
    spec = C.import_spec(cfg, "authors", "sim-LDM", 42)
    return main(["import-checkpoint", "--spec", json.dumps(spec), "--source", str(source),
                 "--base", str(tiny_base), "--out", str(out)])


@pytest.mark.slow
def test_imported_adapter_scores_bit_equal_to_peft_by_hand(authors_adapter, tiny_base,
                                                            default_cfg, tiny_data, tmp_path):
    from peft.utils import set_peft_model_state_dict

    from bilora.api.detector import load_detector
    from bilora.bases.blip2 import BLIP2
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.kinds.bilora.detector import BiLoRADetector
    from bilora.model_files import read_detector_meta

    out = tmp_path / "cell" / "model"
    assert run_import(default_cfg, tiny_base, authors_adapter, out) == 0
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "detector.json",
            "processor_config.json"} <= files and "adapter_model.bin" not in files
    meta = read_detector_meta(out)
    prov = meta["provenance"]
    assert prov["checkpoint_source"] == str(authors_adapter)
    assert set(json.loads(prov["checkpoint_sha256"])) == {"adapter_config.json",
                                                          "adapter_model.bin"}
    assert prov["adapter_base"] == AUTHORS_CONFIG["base_model_name_or_path"]
    assert json.loads(prov["dropped_config_keys"]) == ["merge_weights"]
    assert "trained on ybelkada/blip2-opt-2.7b-fp16-sharded" in meta["describe"]
    assert meta["parameters"]["trainable"] == 2 * 2 * 16 * 32  # q and k of the one layer

    rows = load_rows([tiny_data], "test", ["sim-LDM", "sim-ProGAN"])
    det = load_detector(out)
    images = ImageTable(rows, det.input_size)
    x = torch.stack([images[i][0] for i in range(16)])
    by_hand, _ = _lora(tiny_base)
    set_peft_model_state_dict(by_hand, torch.load(authors_adapter / "adapter_model.bin"))
    ref = BiLoRADetector(det.cfg, by_hand.eval(), BLIP2.load_processor(tiny_base),
                         str(tiny_base)).eval()
    got, want = det.predict_proba(x), ref.predict_proba(x)
    assert torch.equal(got, want)
    assert got.std() > 0  # the adapter's weights matter: the comparison has teeth


def _broken(authors_adapter, tmp_path, change):
    folder = tmp_path / "src"
    shutil.copytree(authors_adapter, folder)
    change(folder)
    return folder


def _edit_state(fn):
    def change(folder):
        state = torch.load(folder / "adapter_model.bin")
        fn(state)
        torch.save(state, folder / "adapter_model.bin")
    return change


def _edit_config(**over):
    def change(folder):
        conf = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**conf, **over}))
    return change


def _truncate(folder):
    data = (folder / "adapter_model.bin").read_bytes()
    (folder / "adapter_model.bin").write_bytes(data[: len(data) // 2])


KEY = "base_model.model.language_model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight"
BAD = {
    "missing": (_edit_state(lambda s: s.pop(KEY)), "adapter_model.bin: keys missing: " + KEY),
    "unexpected": (_edit_state(lambda s: s.update({"base_model.model.extra.weight":
                                                   torch.zeros(2)})),
                   "adapter_model.bin: unexpected keys: base_model.model.extra.weight"),
    "shape": (_edit_state(lambda s: s.update({KEY: torch.zeros(8, 32)})),
              f"adapter_model.bin: wrong shapes: {KEY} (8, 32) (expected (16, 32))"),
    "targets": (_edit_config(target_modules=["c_attn"]),
                "adapter_config.json: target_modules ['c_attn'] do not fit the base"),
    "truncated": (_truncate, "adapter_model.bin: unreadable or truncated weights file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapter_is_refused_in_one_line_leaving_nothing(case, authors_adapter, tiny_base,
                                                            default_cfg, tmp_path, capsys):
    change, said = BAD[case]
    source = _broken(authors_adapter, tmp_path, change)
    cell = tmp_path / "cell"
    assert run_import(default_cfg, tiny_base, source, cell / "model") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and said in err[0], err
    assert err[0].startswith("bilora import-checkpoint: error: ")
    assert not cell.exists() or list(cell.iterdir()) == []


def test_checkpoint_of_no_training_generator_is_a_config_error(default_cfg):
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"]["authors"] = section(default_cfg, "some/folder/x", gen="sim-NOPE")
    with pytest.raises(ConfigError, match=r"detectors\.authors\.weights\.checkpoints\.sim-NOPE"):
        C.validate(cfg)


def test_imported_cells_groups_and_params(default_cfg):
    cfg = copy.deepcopy(default_cfg)
    sec = section(default_cfg, "a/b/ldm")
    sec["weights"]["checkpoints"]["sim-ADM"] = {"source": "org/adapter", "revision": "v1"}
    cfg["detectors"]["authors"] = sec
    C.validate(cfg)
    assert [(c.train, c.seed) for c in C.cells(cfg, "authors")] == [("sim-LDM", 42),
                                                                    ("sim-ADM", 42)]
    assert W.imported_detectors(cfg) == ["authors"] and "authors" not in W.trained_detectors(cfg)
    groups = C.sharing_groups(cfg)
    assert groups == {**C.sharing_groups(default_cfg), next(
        g for g, d in groups.items() if d == ["authors"]): ["authors"]}
    spec = C.import_spec(cfg, "authors", "sim-ADM", 42)
    assert spec["checkpoint"] == {"source": "org/adapter", "revision": "v1"}
    assert list(spec["detector"]["weights"]["checkpoints"]) == ["sim-ADM"]
    from bilora.artifacts import needed

    keys = [a.key for a in needed(C.detectors(cfg)) if a.kind == "checkpoint"]
    assert keys == ["detectors.authors.weights.checkpoints.sim-LDM",
                    "detectors.authors.weights.checkpoints.sim-ADM"]
    assert W.artifacts(cfg) == W.artifacts(default_cfg)  # the prefetch rule is unchanged


@pytest.mark.slow
def test_dry_run_imports_the_cells_instead_of_training_them(tmp_path, authors_adapter,
                                                            default_cfg):
    from tests.test_workflow import job_counts, smk, trimmed

    cfg = trimmed()
    sec = section(default_cfg, authors_adapter, gen="sim-LDM")
    cfg["detectors"] = {"bilora": cfg["detectors"]["bilora"], "authors": sec}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-n", "all", "--configfile", str(tmp_path / "c.yaml"), "--printshellcmds",
              cwd=tmp_path)
    counts = job_counts(out.stdout)
    assert counts["import_checkpoint"] == 1 and counts["train_detector"] == 2
    imports = [line for line in out.stdout.splitlines() if "bilora.cli import-checkpoint" in line]
    assert len(imports) == 1 and "results/e2e/authors/train=sim-LDM/seed=42/model" in imports[0]
    trains = [line for line in out.stdout.splitlines() if "bilora.cli train " in line]
    assert trains and all("/authors/" not in line for line in trains)


def test_a_null_checkpoint_leaves_its_generator_out(default_cfg):
    cfg = copy.deepcopy(default_cfg)
    sec = section(default_cfg, "a/b/ldm")
    sec["weights"]["checkpoints"]["sim-ADM"] = None  # as an overlay trimming generators does
    cfg["detectors"]["authors"] = sec
    C.validate(cfg)
    assert [c.train for c in C.cells(cfg, "authors")] == ["sim-LDM"]
    cfg["generators"]["train"] = [g for g in cfg["generators"]["train"] if g != "sim-ADM"]
    C.validate(cfg)  # a dropped generator's null entry is no config error
    from bilora.artifacts import needed

    assert [a.key for a in needed(C.detectors(cfg)) if a.kind == "checkpoint"] == [
        "detectors.authors.weights.checkpoints.sim-LDM"]


def test_an_imported_detector_is_described_and_sized_without_a_training_section(default_cfg):
    """No ``train:`` in an imported section: describe and job sizing still answer."""
    from bilora import resources as R
    from bilora.describe import describe

    cfg = copy.deepcopy(default_cfg)
    section = {k: v for k, v in cfg["detectors"]["bilora"].items() if k != "train"}
    section["weights"] = {"from": "checkpoints", "checkpoints": {"sim-LDM": "/nonexistent"}}
    cfg["detectors"]["released"] = section
    cfg = C.validate(cfg)
    assert any("imported, not trained" in line for line in describe(cfg["detectors"]["released"]))
    sized = R.rule_resources(cfg, "train_detector")  # the largest training job: not this one
    assert sized["mem_mb"] > 0
    assert R.rule_resources(cfg, "score_cell", {"detector": "released"})["mem_mb"] > 0
