"""Config-level ``bilora`` commands: ``ls``, ``validate``, ``describe``.

They read a config file the way the Snakefile does (a complete config as is, a partial
one as an overlay on the embedded default) and never run a model.
"""

from __future__ import annotations

import argparse

from bilora.errors import ConfigError


def cmd_ls(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.api.bases import BASES
    from bilora.api.kinds import kind_names
    from bilora.api.layouts import LAYOUTS

    cfg = C.load(args.configfile)
    print(f"run: {cfg['run']}   (results/{cfg['run']}/)")
    print("detectors:")
    for name, det in C.detectors(cfg).items():
        print(f"  {name:12s} kind={det['kind']}")
    print("registered kinds: " + ", ".join(kind_names()))
    print("registered VLM bases (model_type): " + ", ".join(BASES.names()))
    print("registered dataset layouts: " + ", ".join(LAYOUTS.names()))
    print("training generators: " + ", ".join(cfg["generators"]["train"]))
    print("test generators:     " + ", ".join(cfg["generators"]["test"]))
    for name, ds in cfg["data"]["datasets"].items():
        print(f"dataset {name}: source={ds['source']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.api.kinds import check_models

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
    try:
        lines = describe(dets[args.detector])
    except ConfigError as exc:
        raise ConfigError(f"{args.configfile or C.default_config_path()}: "
                          f"detectors.{args.detector}: {exc}") from None
    for line in lines:
        print(line)
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    import json

    from bilora import artifacts
    from bilora import config as C

    if args.spec:
        wanted = [artifacts.Artifact(**a) for a in json.loads(args.spec)]
    else:
        from bilora.data.hub import dataset_artifacts

        cfg = C.load(args.configfile)
        wanted = artifacts.needed(C.detectors(cfg)) + dataset_artifacts(cfg["data"]["datasets"])
    found = artifacts.prefetch(wanted, check_only=args.check, configfile=args.configfile)
    for f in found:
        how = "fetched" if f["fetched"] else "present"
        print(f"{how:8s} {f['kind']:6s} {f['name']}  {f['bytes'] / 2**20:,.1f} MiB  {f['path']}")
    if not found:
        print("no pretrained artifacts needed")
    if args.out:
        from bilora.atomic import write_json

        write_json(args.out, found)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the whole config schema: the YAML file with what the plug-ins contribute (the
    registered kinds' sections, bases' tiny sections, layouts)."""
    import yaml

    from bilora import config as C

    print(yaml.safe_dump(C.schema(), sort_keys=False, width=100), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the config-level commands to the ``bilora`` parser."""
    for name, fn, help in (("ls", cmd_ls, "show detectors, kinds, generators, datasets"),
                           ("validate", cmd_validate, "validate a config against the schema")):
        s = sub.add_parser(name, help=help)
        s.add_argument("--configfile", default=None)
        s.set_defaults(func=fn, job=False)
    s = sub.add_parser("schema", help="print the config schema with every registered plug-in's "
                       "part (the manual of the config)")
    s.set_defaults(func=cmd_schema, job=False)
    s = sub.add_parser("describe", help="model summary on the meta device (no weights)")
    s.add_argument("--configfile", default=None)
    s.add_argument("--detector", required=True)
    s.set_defaults(func=cmd_describe, job=False)
    s = sub.add_parser("prefetch", help="fetch (or, offline, check) every pretrained artifact "
                       "a config needs (VLM checkpoints, classifier weights, released "
                       "checkpoints, hub datasets)")
    s.add_argument("--configfile", default=None)
    s.add_argument("--spec", default=None, help="the artifacts as JSON (what the rule passes)")
    s.add_argument("--check", action="store_true",
                   help="only check they are present and loadable (as HF_HUB_OFFLINE=1 does)")
    s.add_argument("--out", default=None, help="write what was found as JSON")
    s.set_defaults(func=cmd_prefetch)
