"""Config-level ``bilora`` commands: ``ls``, ``validate``, ``describe``.

They read a config file the way the Snakefile does (a complete config as is, a partial
one as an overlay on the embedded default) and never run a model.
"""

from __future__ import annotations

import argparse

from bilora.errors import ConfigError


def cmd_ls(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.registry import KINDS

    cfg = C.load(args.configfile)
    print(f"run: {cfg['run']}   (results/{cfg['run']}/)")
    print("detectors:")
    for name, det in C.detectors(cfg).items():
        print(f"  {name:12s} kind={det['kind']}")
    print("registered kinds: " + ", ".join(sorted(KINDS)))
    print("training generators: " + ", ".join(cfg["generators"]["train"]))
    print("test generators:     " + ", ".join(cfg["generators"]["test"]))
    for name, ds in cfg["data"]["datasets"].items():
        print(f"dataset {name}: source={ds['source']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.registry import check_models

    cfg = C.load(args.configfile)
    check_models(C.detectors(cfg))
    print(f"{args.configfile or C.default_config_path()}: valid ({len(C.cells(cfg))} cells)")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.describe import describe

    cfg = C.load(args.configfile)
    dets = C.detectors(cfg)
    if args.detector not in dets:
        raise ConfigError(f"no detector {args.detector!r} in the config; known: {', '.join(dets)}")
    for line in describe(dets[args.detector]):
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the config-level commands to the ``bilora`` parser."""
    for name, fn, help in (("ls", cmd_ls, "show detectors, kinds, generators, datasets"),
                           ("validate", cmd_validate, "validate a config against the schema")):
        s = sub.add_parser(name, help=help)
        s.add_argument("--configfile", default=None)
        s.set_defaults(func=fn, job=False)
    s = sub.add_parser("describe", help="model summary on the meta device (no weights)")
    s.add_argument("--configfile", default=None)
    s.add_argument("--detector", required=True)
    s.set_defaults(func=cmd_describe, job=False)
