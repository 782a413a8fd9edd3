"""Job sizing (bilora/resources.py), and the whole DAG on a real SLURM cluster.

The cluster tests start a throw-away single-node slurmctld/slurmd with two fake GPUs
(scripts/slurm/local-cluster.sh; needs root and Debian's slurm-wlm from apt) and run a
trimmed config through ``--workflow-profile profiles/slurm``. Where the cluster cannot
start they skip, naming why; with ``CI`` set they fail instead.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from bilora import config as C
from bilora import resources as R
from tests.conftest import DEFAULT, PAPER, ROOT

SCRIPT = ROOT / "scripts" / "slurm" / "local-cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
GENS = ["sim-ProGAN", "sim-LDM", "sim-ADM"]
CANCELLED = "sim-LDM"   # its training is scancelled after its first epoch, then rerun
BROKEN = "sim-ADM"      # loses a training image once the data exist: its cell fails
EPOCHS = 6


# -- sizing: no cluster needed ------------------------------------------------------------

@pytest.fixture(scope="module")
def paper_cfg() -> dict:
    return C.load(PAPER)


def test_embedded_default_jobs_are_small_and_cpu_only(default_cfg):
    for rule in R.RULES:
        res = R.rule_resources(default_cfg, rule)
        assert res["gpu"] == 0, rule
        assert 10 <= res["runtime"] <= 30, (rule, res)   # measured: 10 min (the floor)
        assert 1024 <= res["mem_mb"] <= 4096, (rule, res)  # measured: 1.0-2.5 GiB


def test_paper_model_jobs_want_a_gpu_hours_and_tens_of_gigabytes(paper_cfg):
    wc = {"detector": "bilora", "generator": "LDM"}
    bilora = R.rule_resources(paper_cfg, "train_detector", wc)
    resnet = R.rule_resources(paper_cfg, "train_detector", {**wc, "detector": "resnet50"})
    # measured: Bi-LoRA 1235 min and 19.5 GiB; ResNet50 115 min
    assert bilora["gpu"] == 1 and bilora["runtime"] >= 8 * 60 and bilora["mem_mb"] >= 10_000
    assert resnet["gpu"] == 1 and 30 <= resnet["runtime"] < bilora["runtime"] / 4
    for rule in R.DATA_RULES + R.OTHER_RULES:
        assert R.rule_resources(paper_cfg, rule)["gpu"] == 0, rule
    # 116M per-image scores: the metrics job needs far more memory than the report
    assert R.rule_resources(paper_cfg, "compute_metrics")["mem_mb"] >= 8 * 1024
    assert R.rule_resources(paper_cfg, "render_report")["mem_mb"] <= 4096


def test_runtime_follows_the_work_and_the_attempt(paper_cfg):
    cfg = copy.deepcopy(paper_cfg)
    cfg["resources"]["max_runtime"] = None
    wc = {"detector": "resnet50", "generator": "LDM"}
    base = R.rule_resources(cfg, "train_detector", wc)
    cfg["detectors"]["resnet50"]["train"]["epochs"] *= 4
    longer = R.rule_resources(cfg, "train_detector", wc)
    assert 3 * base["runtime"] < longer["runtime"] < 5 * base["runtime"]
    assert R.rule_resources(cfg, "train_detector", wc, attempt=3)["runtime"] == 3 * longer[
        "runtime"]
    cfg["resources"]["max_runtime"] = 600
    assert R.rule_resources(cfg, "train_detector", wc, attempt=3)["runtime"] == 600
    cfg["resources"]["runtime_scale"] = 0.5
    cfg["resources"]["max_runtime"] = None
    assert R.rule_resources(cfg, "train_detector", wc)["runtime"] < longer["runtime"] * 0.6


def test_gpus_per_model_job_follows_the_device_unless_set(default_cfg):
    cfg = copy.deepcopy(default_cfg)
    assert cfg["resources"]["gpus_per_model_job"] is None
    for device, want in (("auto", 0), ("cpu", 0), ("cuda", 1)):
        cfg["device"] = device
        assert R.rule_resources(cfg, "train_detector")["gpu"] == want
        assert R.rule_resources(cfg, "make_procedural_dataset")["gpu"] == 0
    cfg["resources"]["gpus_per_model_job"] = 2
    assert R.rule_resources(cfg, "score_cell")["gpu"] == 2
    assert R.rule_resources(cfg, "compute_metrics")["gpu"] == 0


def test_every_rule_is_sized_and_unknown_rules_are_refused(default_cfg):
    rules = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    assert rules and rules <= set(R.RULES), rules - set(R.RULES)
    with pytest.raises(ValueError, match="no_such_rule"):
        R.rule_resources(default_cfg, "no_such_rule")


def _plugin_missing() -> str | None:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"SLURM tests cannot run under CI: {reason}")
    pytest.skip(reason)


def _jobs_with_resources(text: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run prints."""
    jobs = []
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res:
            jobs.append((rule[1], dict(kv.split("=", 1) for kv in res[1].split(", "))))
    return jobs


def _smk(*args: str, cwd: Path, timeout: int = 300, popen: bool = False, nice: int = 0):
    """Snakemake under `timeout -s INT` (SIGINT makes it scancel its jobs and exit)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["nice", "-n", str(nice), "timeout", "-s", "INT", "-k", "30", str(timeout),
           sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(cwd), *args]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 60)


@pytest.mark.slow
def test_paper_dry_run_on_the_slurm_profile_asks_gpus_for_model_jobs_only(tmp_path):
    if reason := _plugin_missing():
        _unavailable(reason)
    out = _smk("-n", "all", "--workflow-profile", str(PROFILE), "--configfile", str(PAPER),
               cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = [(r, res) for r, res in _jobs_with_resources(out.stdout + out.stderr) if r != "all"]
    rules = {rule for rule, _ in jobs}
    assert {"train_detector", "score_cell", "organize_dataset", "compute_metrics",
            "render_report"} <= rules
    for rule, res in jobs:
        want = "1" if rule in R.MODEL_RULES else "0"
        assert res.get("gpu") == want, (rule, res)
        assert int(res["runtime"]) >= 10 and int(res["mem_mb"]) >= 1024, (rule, res)
    train = [res for rule, res in jobs if rule == "train_detector"]
    assert len(train) == 21 and max(int(r["runtime"]) for r in train) >= 8 * 60


# -- the real cluster ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def cluster():
    """A running local cluster with 2 fake GPUs: .ci/run's (BILORA_SLURM_UP=1) or our own."""
    if reason := _plugin_missing():
        _unavailable(reason)
    if os.environ.get("BILORA_SLURM_UP") == "1":  # started (and stopped) by .ci/run
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        if "idle" not in states.stdout.split():
            _unavailable(f"BILORA_SLURM_UP=1 but no idle node: {states.stdout or states.stderr}")
        yield
        return
    if os.geteuid() != 0:
        _unavailable("the local SLURM cluster needs root")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        _unavailable("no slurmctld and no apt-get to install it")
    state = Path(tempfile.mkdtemp(prefix="bilora-slurm-"))  # munged: not under a 0700 folder
    env = {**os.environ, "BILORA_SLURM_STATE": str(state)}
    start = subprocess.run([str(SCRIPT), "start", "--fake-gpus", "2"], capture_output=True,
                           text=True, env=env, timeout=600)
    try:
        if start.returncode:
            why = [line for line in start.stderr.splitlines()
                   if line.startswith("local-cluster: ") and "installing" not in line]
            _unavailable(f"local SLURM cluster did not start: {why[0] if why else start.stderr}")
        yield
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def slurm_config() -> dict:
    """A complete config: the dummy detector on three generators, a fake GPU per model job."""
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg.update(run="slurm", device="cpu")
    cfg["data"]["root"] = "data"
    cfg["data"]["datasets"]["procedural"].update(generators=GENS, train_per_class=250,
                                                 test_per_class=30)
    cfg["generators"] = {"train": GENS, "test": GENS}
    cfg["detectors"] = {"dummy": {"kind": "dummy", "image_size": 48, "eval": {"batch_size": 128},
                                  "train": {"epochs": EPOCHS, "batch_size": 50, "lr": 0.01}}}
    cfg["evaluation"]["perturbations"] = {"none": ["-"], "jpeg": [50]}
    # the attack axis' jobs are sized and sent to a GPU in the paper dry run above; here they
    # would only add minutes to a test of the SLURM flow
    cfg["evaluation"]["attacks"] = None
    cfg["resources"]["gpus_per_model_job"] = 1
    return C.validate(cfg)  # the schema's defaults filled in, as the Snakefile sees it


def submitted(text: str) -> list[tuple[str, str, int]]:
    """(rule, wildcards folder, SLURM job id) of every sbatch submission, in order."""
    return [(m[2], m[3], int(m[1])) for m in re.finditer(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/(?:(\S+)/)?\d+\.log",
        text)]


def scontrol(job_id: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True,
                         text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def sbatch_jobs(text: str) -> dict[int, dict]:
    """Every SLURM job of one Snakemake run: rule, attempt and what SLURM recorded for it."""
    jobs, attempts = {}, {}
    for rule, wildcards, job_id in submitted(text):
        attempts[rule, wildcards] = attempts.get((rule, wildcards), 0) + 1
        jobs[job_id] = {"rule": rule, "wildcards": wildcards or "",
                        "attempt": attempts[rule, wildcards], **scontrol(job_id)}
    return jobs


def megabytes(value: str) -> int:
    """scontrol's 1792M / 2G / 1.50G as megabytes."""
    num, unit = re.fullmatch(r"([\d.]+)([MGT])", value).groups()
    return round(float(num) * {"M": 1, "G": 1024, "T": 1024**2}[unit])


def rule_logs(workdir: Path) -> dict[Path, str]:
    paths = list((workdir / "results").rglob("*.log")) + list((workdir / "data").rglob("*.log"))
    return {p: p.read_text() for p in paths}


def job_counts(text: str) -> dict[str, int]:
    block = text[text.index("Job stats:"):]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", block, re.M)
            if m[0] != "total"}


def cell_file(workdir: Path, generator: str, name: str) -> Path:
    """A cell's file wherever the layout puts it (results/<run>/<det>/train=<G>/...)."""
    found = [p for p in (workdir / "results").rglob(name) if f"train={generator}" in str(p)]
    assert len(found) == 1, found
    return found[0]


def tables(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (workdir / "results").rglob("tables/*.csv")}


@pytest.fixture(scope="module")
def flow(cluster, tmp_path_factory):
    """The trimmed config on SLURM, and run locally meanwhile. In the first SLURM run one
    cell's training is scancelled after its first epoch and another cell loses a training
    image once the data exist (it fails; -k lets the rest go on). Then the image comes back
    and a second run completes the DAG."""
    local, work = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("slurm")
    for d in (local, work):
        (d / "config.yaml").write_text(yaml.safe_dump(slurm_config()))
    slurm = ("all", "--workflow-profile", str(PROFILE), "--max-threads", str(os.cpu_count()),
             "--configfile", str(work / "config.yaml"))
    t0 = time.monotonic()
    # the local run takes the CPU time the SLURM jobs leave (they mostly wait on the scheduler)
    ref = _smk("--cores", "2", "all", "--configfile", str(local / "config.yaml"), cwd=local,
               popen=True, nice=10)
    run = _smk(*slurm, "--keep-going", "--retries", "0", cwd=work, timeout=300, popen=True)
    image = hidden = cancelled = None
    while run.poll() is None:
        if image is None and list((work / "data").rglob("manifest.parquet")):
            image = sorted((work / "data").rglob(f"train/{BROKEN}/1_fake/*.png"))[0]
            hidden = image.rename(work / "hidden.png")
        if cancelled is None and [p for p in (work / "results").rglob("checkpoint/last.pt")
                                  if f"train={CANCELLED}" in str(p)]:
            log = cell_file(work, CANCELLED, "train.log").read_text()
            cancelled = int(re.search(r"slurm_job_id=(\d+)", log)[1])
            subprocess.run(["scancel", str(cancelled)], check=True)
        time.sleep(0.1)
    first = run.communicate()[0]
    first_s = time.monotonic() - t0
    assert image is not None, first[-3000:]
    snapshot = dict(jobs=sbatch_jobs(first), cancelled=cancelled,
                    broken_log=cell_file(work, BROKEN, "train.log").read_text())
    hidden.rename(image)
    t1 = time.monotonic()
    fixed = _smk(*slurm, cwd=work, timeout=300)
    fixed_text = fixed.stdout + fixed.stderr
    fixed_s = time.monotonic() - t1
    ref_out = ref.communicate()[0]
    assert ref.returncode == 0, ref_out[-3000:]
    print(f"SLURM runs: first {first_s:.0f} s, fix {fixed_s:.0f} s")  # pytest -s
    return dict(work=work, local=local, first=first, first_rc=run.returncode, image=image,
                fixed=fixed_text, fixed_rc=fixed.returncode, fixed_jobs=sbatch_jobs(fixed_text),
                logs=rule_logs(work), **snapshot)


@pytest.mark.slow
def test_every_job_ran_under_slurm(flow):
    assert flow["fixed_rc"] == 0, flow["fixed"][-3000:]
    first = sorted(job["rule"] for job in flow["jobs"].values())
    assert first == ["make_procedural_dataset", "score_cell"] + ["train_detector"] * len(GENS)
    assert {job["rule"] for job in flow["fixed_jobs"].values()} == {
        "train_detector", "score_cell", "collect_warnings", "compute_metrics", "render_report"}
    assert (flow["work"] / ".snakemake" / "slurm_logs").is_dir()
    ids = {str(j) for j in [*flow["jobs"], *flow["fixed_jobs"]]}
    # data, train + score per cell, warnings, metrics, report
    assert len(flow["logs"]) == 1 + 2 * len(GENS) + 3
    for path, text in flow["logs"].items():
        job = re.search(r"job: host=\S+ slurm_job_id=(\S+)", text)
        assert job and job[1] in ids, (path, text[:300])


@pytest.mark.slow
def test_resources_reached_sbatch(flow):
    cfg = slurm_config()
    for job_id, job in {**flow["jobs"], **flow["fixed_jobs"]}.items():
        want = R.rule_resources(cfg, job["rule"], attempt=job["attempt"])
        assert megabytes(job["MinMemoryNode"]) == want["mem_mb"], (job_id, job)
        hours, minutes, _ = (int(x) for x in job["TimeLimit"].split(":"))
        assert 60 * hours + minutes == want["runtime"], (job_id, job["attempt"], job["TimeLimit"])
        gres = job.get("TresPerJob", "")
        assert (gres == "gres:gpu:1") == (job["rule"] in R.MODEL_RULES), (job_id, gres)
    # inside the jobs: the fake GPU is visible to model jobs only
    for path, text in flow["logs"].items():
        gpus = re.search(r"cuda_visible_devices=(\S+)", text)[1]
        assert (gpus != "-") == (path.name in ("train.log", "score.log")), (path, gpus)


@pytest.mark.slow
def test_tables_equal_a_local_run(flow):
    local = tables(flow["local"])
    assert len(local) >= 3 and tables(flow["work"]) == local


@pytest.mark.slow
def test_a_cancelled_training_resumes_from_its_checkpoint(flow):
    assert flow["cancelled"], "no checkpoint appeared before the training ended"
    assert flow["jobs"][flow["cancelled"]]["JobState"] == "CANCELLED"
    rerun = [j for j, job in flow["fixed_jobs"].items()
             if job["rule"] == "train_detector" and CANCELLED in job["wildcards"]]
    assert len(rerun) == 1 and flow["fixed_jobs"][rerun[0]]["JobState"] == "COMPLETED"
    text = flow["logs"][cell_file(flow["work"], CANCELLED, "train.log")]
    assert f"slurm_job_id={rerun[0]} " in text
    resumed = re.search(r"resumed from \S+last\.pt after epoch (\d+) of (\d+)", text)
    assert resumed, text[-2000:]
    assert 1 <= int(resumed[1]) < EPOCHS


@pytest.mark.slow
def test_a_failing_cell_ends_the_run_and_its_fix_reruns_only_that_cell(flow):
    assert flow["first_rc"] not in (0, 124, 137), flow["first"][-3000:]  # an error, no timeout
    missing = flow["image"].name
    cause = rf"{missing} is listed in \S+ but no longer exists"
    assert re.search(cause, flow["broken_log"])
    # Snakemake prints the failed job's rule log (show-failed-logs in the profile) ...
    assert re.search(cause, flow["first"])
    # ... and its SLURM log names the cause (the rule log's last lines), the rule and that log
    failed = [job for job in flow["jobs"].values() if job["JobState"] == "FAILED"]
    assert len(failed) == 1 and failed[0]["rule"] == "train_detector"
    assert BROKEN in failed[0]["wildcards"]
    slurm_log = Path(failed[0]["StdOut"]).read_text()
    assert re.search(cause, slurm_log), slurm_log[-3000:]
    assert "Error in rule train_detector" in slurm_log and "train.log" in slurm_log
    # the finished cell is kept; the rerun runs the failed and the cancelled cells, and what
    # depends on them
    assert job_counts(flow["fixed"]) == {"train_detector": 2, "score_cell": 2,
                                         "collect_warnings": 1, "compute_metrics": 1,
                                         "render_report": 1, "all": 1}
    reran = {g for job in flow["fixed_jobs"].values() if job["rule"] in R.MODEL_RULES
             for g in GENS if g in job["wildcards"]}
    assert reran == {BROKEN, CANCELLED}
