"""The paper config, rehearsed end to end on a miniature of the real data.

``workflow/config/paper.yaml`` plus an overlay that changes only scale and places
(``tests.miniworld.OVERLAY_KEYS``) runs every stage of the paper's path: the Zenodo record
over a loopback server that cuts the first download of every file halfway, extraction, the
LSUN rebuild from an LMDB, folder digests, the GenImage folders scored against the shared
LSUN reals, a BLIP-2 base named by path, the authors' seven adapters (in their published
PEFT 0.4/0.5 form, for the world's BLIP-2) imported as ``bilora_authors``, full-size timm
baselines from local weights, every perturbation level, metrics and the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pandas as pd
import pytest
import yaml

from bilora import config as C
from tests.conftest import PAPER
from tests.miniworld import REHEARSAL_SIZES, build_world, overlay_for, rehearse, serve_world
from tests.test_workflow import job_counts, smk

pytestmark = pytest.mark.slow
RULES = {"fetch_zenodo_record", "extract_archives", "rebuild_lsun_real", "check_split_digest",
         "organize_dataset", "prefetch_models", "train_detector", "import_checkpoint",
         "score_cell", "score_group",
         "gather_scores", "collect_warnings", "compute_metrics", "render_report",
         "attack_cell", "transfer_cell", "render_attack_report"}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    world = build_world(root / "world", **REHEARSAL_SIZES)
    work = root / "work"
    with serve_world(world) as server:
        overlay = overlay_for(world)
        t0 = time.perf_counter()
        proc = rehearse(world, overlay, work)
        wall = time.perf_counter() - t0
        requests = {k: server.requests_for(k) for k in world.record_files}
    print(f"\nrehearsal: {wall:.0f} s wall on {os.cpu_count()} CPUs, load {os.getloadavg()}")
    assert proc.returncode == 0, proc.stdout[-6000:]
    return world, work, proc.stdout, requests, overlay


def test_every_stage_ran_and_cut_downloads_resumed(rehearsal):
    world, _, log, requests, _ = rehearsal
    ran = {r for r in job_counts(log)}
    assert RULES <= ran, RULES - ran
    for key, reqs in requests.items():  # the server cut the first download of every file
        assert [("Range" in r[2]) for r in reqs if "/files/" in r[1]] == [False, True], key


def test_manifests_hold_the_counts_and_share_the_real_test_set(rehearsal):
    world, work, _, _, overlay = rehearsal
    data = work / "data" / "paper-rehearsal"
    ricker = pd.read_parquet(data / "ricker" / "manifest.parquet")
    assert len(ricker) == world.manifest_rows["ricker"]
    shared = set(ricker.query("split == 'test' and label == 0").sha1)
    per_class = overlay["data"]["sample"]["test_fakes_per_generator"]
    for ds in ("genimage_sd14", "genimage_glide"):
        m = pd.read_parquet(data / ds / "manifest.parquet")
        test = m[m.split == "test"]
        assert set(test[test.label == 0].sha1) == shared  # the shared LSUN reals
        assert (test.label == 1).sum() == per_class  # a sample of GenImage's fakes
        train = m[m.split == "train"].groupby("label").size()
        assert (train == overlay["data"]["sample"]["train_per_class"]).all()


def test_digests_were_computed_and_checked(rehearsal):
    world, work, _, _, _ = rehearsal
    digests = work / "data" / "paper-rehearsal" / "ricker" / "digests"
    for split in ("train", "val", "test"):  # the world's own digests, expected by the overlay
        assert (digests / f"{split}.sha1").read_text().split() == [world.digests[split]]
    warnings = json.loads((work / "results" / "paper-rehearsal" / "warnings.json").read_text())
    assert not [w for w in warnings if "digest" in w["source"]]


def test_results_are_complete_and_the_method_is_the_papers(rehearsal):
    world, work, _, _, _ = rehearsal
    res = work / "results" / "paper-rehearsal"
    metrics = pd.read_parquet(res / "metrics.parquet")
    paper = C.load(PAPER)
    assert len(metrics) == 4 * 7 * 12 * len(C.conditions(paper))  # bilora_authors included
    adapter = json.loads((res / "bilora" / "train=LDM" / "seed=42" / "model" /
                          "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj"} and adapter["r"] == 16
    model = res / "bilora" / "train=LDM" / "seed=42" / "model"
    assert (model / adapter["base_model_name_or_path"]).resolve() == world.blip2.resolve()
    table = (res / "tables" / "paper_vs_reproduced.md").read_text()
    assert paper["detectors"]["bilora_authors"]["label"] in table  # the imported column
    assert "ricker" in (res / "tables" / "robustness_accuracy.md").read_text().lower()


def test_a_second_run_has_nothing_to_do_and_a_change_reruns_only_its_cells(rehearsal):
    world, work, _, _, overlay = rehearsal
    paper = str(PAPER)
    (work / "same.yaml").write_text(yaml.safe_dump(overlay))  # the same URL: nothing fetched
    same = smk("-n", "all", "--configfile", paper, str(work / "same.yaml"), cwd=work)
    assert "Nothing to be done" in same.stdout + same.stderr
    changed = yaml.safe_load(yaml.safe_dump(overlay))
    changed["detectors"]["resnet50"]["train"]["lr"] = 3e-4
    (work / "lr.yaml").write_text(yaml.safe_dump(changed))
    out = smk("-n", "all", "--configfile", paper, str(work / "lr.yaml"), cwd=work)
    # and the attack axis of the LDM cells (REHEARSAL_ATTACKS): resnet50's attack, and the
    # other 3 detectors' transfer cells that score its adversarial images (the only source)
    assert job_counts(out.stdout) == {"train_detector": 7, "score_cell": 7,
                                      "collect_warnings": 1, "compute_metrics": 1,
                                      "render_report": 1, "attack_cell": 1, "transfer_cell": 3,
                                      "render_attack_report": 1, "all": 1}


def test_the_authors_adapters_were_imported_and_scored(rehearsal):
    world, work, log, _, _ = rehearsal
    res = work / "results" / "paper-rehearsal"
    assert job_counts(log)["import_checkpoint"] == 7
    for gen, folder in world.adapters.items():
        model = res / "bilora_authors" / f"train={gen}" / "seed=42" / "model"
        prov = json.loads((model / "detector.json").read_text())["provenance"]
        assert prov["checkpoint_source"] == str(folder)
        sha = hashlib.sha256((folder / "adapter_model.bin").read_bytes()).hexdigest()
        assert json.loads(prov["checkpoint_sha256"])["adapter_model.bin"] == sha
        assert prov["adapter_base"] == "ybelkada/blip2-opt-2.7b-fp16-sharded"
        assert not (res / "bilora_authors" / f"train={gen}" / "seed=42" / "checkpoint").exists()
    metrics = pd.read_parquet(res / "metrics.parquet")
    scored = metrics[metrics.detector == "bilora_authors"]
    assert set(scored.train) == set(world.adapters)
    assert len(scored) == 7 * 12 * len(C.conditions(C.load(PAPER)))
    assert scored.accuracy.notna().all()
