# bilora-bench: the whole benchmark as one DAG.
#   data -> train(detector, training generator) -> score -> metrics -> tables, figures
# With no flags the embedded default runs (workflow/config/default.yaml). A config that
# sets every top-level key is complete (--configfile workflow/config/paper.yaml); any
# other is an overlay on the default. Either way it is validated against workflow/schemas/.
import os
import sys
from pathlib import Path

from bilora import config as C
from bilora.attacks import plan as A
from bilora import resources as R
from bilora import workflow as W

_given = [str(f) for f in getattr(workflow.config_settings, "configfiles", None) or []]
_resolved = C.resolve(dict(config), Path(workflow.basedir) / "workflow/config/default.yaml",
                      source=" + ".join(_given) or "the embedded default config")
config.clear()
config.update(_resolved)
if workflow.is_main_process:  # model names (timm's registry, a base's path) fail here, not in a job
    W.check_models(config)
    for _line in W.attack_notes(config):
        print(_line, file=sys.stderr)

# Jobs run `python3 -m bilora.cli` with the code beside this Snakefile first on the path,
# so --use-conda environments (which hold the dependencies) run this checkout's code too.
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))
RES = W.results(config)
CELL = f"{RES}/{{detector}}/train={{generator}}/seed={{seed}}"
ROOT = config["data"]["root"]
ENV = "../../envs/bilora.yaml"  # relative to the rule files

wildcard_constraints:
    detector=W.regex(W.detector_ids(config)),
    generator=W.regex(config["generators"]["train"]),
    seed=W.regex([str(s) for s in C.seeds(config)]),
    base=W.regex(list(W.bases(config))),
    dataset=W.regex(list(config["data"]["datasets"])),


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/attack.smk"


onsuccess:
    for line in W.warning_lines(config):
        print(line)


rule all:
    input:
        W.tables(config),
        W.figures(config),
        W.attack_outputs(config),
    default_target: True
