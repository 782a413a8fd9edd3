"""The ``bilora`` command: what every Snakemake rule calls, and the user's tools.

Subcommands come from five modules: :mod:`bilora.cli.steps` (the workflow steps, each
taking a ``--spec``: the JSON config slice of one job, as the rule's params carry it),
:mod:`bilora.cli.data` (fetch, extract, rebuild, organize, digest),
:mod:`bilora.cli.project` (``ls``, ``validate``, ``describe``, ``prefetch``: they read a
config file the way the Snakefile does), :mod:`bilora.cli.predict` (``predict``: any
images scored with a saved model) and :mod:`bilora.cli.attacks` (``attack``, ``transfer``,
``attack-report``: the adversarial axis). Heavy libraries are imported inside the
commands, so ``bilora --help`` is instant.

Errors follow one convention (:mod:`bilora.errors`): a user error (config, data, a
missing or changed file, a missing model artifact) prints one line naming the culprit,
``bilora <command>: error: ...``, with exit status 2 for the config and 1 otherwise; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

import bilora

log = logging.getLogger("bilora")


def build_parser() -> argparse.ArgumentParser:
    """The ``bilora`` argument parser with every subcommand registered."""
    from bilora.cli import attacks, data, predict, project, steps

    p = argparse.ArgumentParser(prog="bilora", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bilora-bench {bilora.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    steps.register(sub)
    data.register(sub)
    project.register(sub)
    predict.register(sub)
    attacks.register(sub)
    return p


def _job_line() -> str:
    """Where a job runs: host, SLURM job id (when under SLURM), CPUs it may use."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or str(len(os.sched_getaffinity(0)))
    return (f"job: host={socket.gethostname()} "
            f"slurm_job_id={os.environ.get('SLURM_JOB_ID', '-')} cpus={cpus} "
            f"cuda_visible_devices={os.environ.get('CUDA_VISIBLE_DEVICES', '-')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bilora`` console script; returns the exit status."""
    from bilora.errors import UserError

    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if getattr(args, "job", True):  # the workflow steps; not ls, validate, describe
        log.info(_job_line())
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        message = str(exc)
        if "Original Traceback" in message:  # raised in a DataLoader worker: its last line
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        message = " ".join(message.split("\n")) if len(message) < 400 else message
        print(f"bilora {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
