"""Bi-LoRA specifics: LoRA placement, caption loss, readouts, PEFT folder, paper scale."""

import json
import os
from pathlib import Path

import pytest
import torch

from bilora.api.detector import load_detector, save_detector
from bilora.kinds.bilora.detector import BiLoRADetector

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def trained(tiny_base, tiny_data, default_cfg):
    """A tiny Bi-LoRA trained briefly on one stand-in (predictions of both classes)."""
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.training import train_detector

    cfg = {**default_cfg["detectors"]["bilora"],
           "train": {**default_cfg["detectors"]["bilora"]["train"], "epochs": 3,
                     "batch_size": 16, "lr": 3e-3}}
    det = BiLoRADetector.build(cfg, seed=0, base_dir=str(tiny_base))
    rows = load_rows([tiny_data], "train", ["sim-ProGAN"])
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        train_detector(det, ImageTable(rows, det.input_size), cfg["train"], 0, d, "fp",
                       progress=False)
    return det


def _test_images(tiny_data, size, gens=("sim-ProGAN", "sim-LDM")):
    from bilora.data.dataset import ImageTable, load_rows

    rows = load_rows([tiny_data], "test", list(gens)).drop_duplicates("abspath")
    ds = ImageTable(rows, size)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return x, torch.tensor(ds.labels)


def test_every_lora_module_sits_in_the_decoder_self_attention(tiny_base, default_cfg):
    det = BiLoRADetector.build(default_cfg["detectors"]["bilora"], 0, str(tiny_base))
    names = det.lora_module_names()
    assert names and all(".language_model." in n and ".self_attn." in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj"}


def test_paper_config_trains_lora_only(tiny_base, default_cfg):
    cfg = {**default_cfg["detectors"]["bilora"], "extra_trainable": []}
    det = BiLoRADetector.build(cfg, 0, str(tiny_base))
    trainable = [n for n, p in det.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    r, d = 16, default_cfg["detectors"]["bilora"]["base_model"]["tiny"]["text_width"]
    assert det.parameter_counts()["trainable"] == 2 * (r * d + d * r)  # 1 layer, q and k


def test_loss_is_on_the_caption_word_only(trained, tiny_data):
    x, y = _test_images(tiny_data, trained.input_size)
    x, y = x[:6], y[:6]
    trained.eval()
    with torch.no_grad():
        loss = trained.loss(x, y)
        ids = trained.vlm._prompt(len(y))
        logits = trained.model(pixel_values=trained.vlm.pixel_values(x), input_ids=ids,
                               attention_mask=torch.ones_like(ids)).logits[:, -1].float()
        words = torch.tensor(trained.word_ids)[y]
        manual = torch.nn.functional.cross_entropy(logits, words)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-4)


def test_greedy_generation_label_equals_argmax_of_the_scorer(trained, tiny_data):
    x, y = _test_images(tiny_data, trained.input_size)
    p = trained.predict_proba(x)
    labels = trained.generate_labels(x)
    assert ((p >= 0.5).long() == labels).all()
    assert 0 < labels.sum() < len(labels)  # both classes predicted: the check has teeth
    x, y = _test_images(tiny_data, trained.input_size, ["sim-ProGAN"])  # the seen generator
    assert ((trained.predict_proba(x) >= 0.5).long() == y).float().mean() > 0.8


def test_generate_readout_mode_gives_hard_scores(trained, tiny_data):
    x, _ = _test_images(tiny_data, trained.input_size)
    hard = BiLoRADetector({**trained.cfg, "readout": "generate"}, trained.model,
                          trained.processor, trained.base_path).predict_proba(x[:8])
    assert set(hard.tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (trained.predict_proba(x[:8]) >= 0.5).float())


def test_saved_model_is_a_peft_adapter_folder(trained, tmp_path, tiny_data):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Blip2ForConditionalGeneration

    save_detector(trained, tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "detector.json"} <= files
    assert "model.safetensors" not in files  # no base weights written
    keys = load_file(tmp_path / "model" / "adapter_model.safetensors").keys()
    assert all("lora_" in k or "qformer" in k or "language_projection" in k for k in keys)
    conf = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert conf["r"] == 16 and conf["lora_alpha"] == 32 and conf["lora_dropout"] == 0.05
    # the base is named relative to the model folder, not to the working directory
    assert not os.path.isabs(conf["base_model_name_or_path"])
    base_dir = (tmp_path / "model" / conf["base_model_name_or_path"]).resolve()
    assert base_dir == Path(trained.base_path).resolve()
    base = Blip2ForConditionalGeneration.from_pretrained(base_dir)
    peft = PeftModel.from_pretrained(base, tmp_path / "model").eval()
    x, _ = _test_images(tiny_data, trained.input_size)
    expected = trained.predict_proba(x)
    plain = BiLoRADetector(trained.cfg, peft, trained.processor, trained.base_path)
    assert torch.allclose(plain.predict_proba(x), expected, atol=1e-6)  # PEFT alone suffices
    again = load_detector(tmp_path / "model")
    assert isinstance(again.model, PeftModel)
    assert torch.allclose(again.predict_proba(x), expected, atol=1e-6)


def test_tiny_base_round_trips_through_from_pretrained(tiny_base, default_cfg):
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    from bilora.bases.blip2.tiny import make_tiny_blip2

    a, _ = make_tiny_blip2(default_cfg["detectors"]["bilora"]["base_model"]["tiny"], seed=0)
    a.eval()  # built in memory with the seed tiny_base was saved from
    b = Blip2ForConditionalGeneration.from_pretrained(tiny_base).eval()
    proc = AutoProcessor.from_pretrained(tiny_base)
    assert proc.num_query_tokens == a.config.num_query_tokens
    assert a.config.image_token_index == proc.tokenizer.convert_tokens_to_ids("<image>")
    assert a.vision_model.embeddings.patch_embedding.weight.std() > 1e-3  # live init kept
    ids = torch.tensor([[a.config.image_token_index] * a.config.num_query_tokens + [1]])
    pv = torch.rand(1, 3, a.config.vision_config.image_size, a.config.vision_config.image_size)
    with torch.no_grad():
        assert torch.equal(a(pixel_values=pv, input_ids=ids).logits,
                           b(pixel_values=pv, input_ids=ids).logits)


def test_paper_scale_describe_counts_5242880_trainable():
    from bilora import config as C
    from bilora.describe import describe
    from bilora.kinds.bilora.describe import meta_bilora
    from tests.conftest import DEFAULT, PAPER

    cfg = C.load(PAPER, DEFAULT)["detectors"]["bilora"]
    model = meta_bilora(cfg)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 5_242_880
    assert total == 3_749_922_816
    lines = describe(cfg)
    assert "trainable parameters: 5,242,880 (0.140 %)" in lines
    assert sum(".self_attn." in line for line in lines) == 64


def test_bilora_resumes_to_the_same_adapter_weights(tiny_base, tiny_data, default_cfg, tmp_path):
    """Partial checkpoint state (LoRA + modules_to_save) resumes exactly."""
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.training import train_detector

    # constant lr: the stop is simulated by asking for fewer epochs, and a schedule over
    # fewer epochs would be another schedule (a real rerun has the same epochs)
    cfg = {**default_cfg["detectors"]["bilora"],
           "train": {**default_cfg["detectors"]["bilora"]["train"], "epochs": 2,
                     "batch_size": 16, "lr": 3e-3, "schedule": "constant"}}
    rows = load_rows([tiny_data], "train", ["sim-LDM"])

    def run(epochs_list, ckpt):
        for epochs in epochs_list:  # a run stopped after each of these epoch counts
            det = BiLoRADetector.build(cfg, seed=0, base_dir=str(tiny_base))
            train_detector(det, ImageTable(rows, det.input_size), {**cfg["train"],
                           "epochs": epochs}, 0, ckpt, "same-settings", progress=False)
        return det.checkpoint_state()

    full = run([2], tmp_path / "a")
    resumed = run([1, 2], tmp_path / "b")
    assert full.keys() == resumed.keys() and any("qformer" in k for k in full)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_eight_bit_loading_is_refused_clearly_without_cuda(tiny_base, default_cfg):
    """The authors' 8-bit base needs bitsandbytes on CUDA; on this CPU it is a config error."""
    from bilora.errors import ConfigError

    cfg = {**default_cfg["detectors"]["bilora"], "load_in_8bit": True}
    with pytest.raises(ConfigError, match="load_in_8bit needs"):
        BiLoRADetector.build(cfg, 0, str(tiny_base))
