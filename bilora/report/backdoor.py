"""The ``backdoor`` table (``poisoning``): clean accuracy and attack success rate.

One row per poisoned detector and fraction, its unpoisoned base first (fraction 0, the
baseline). Read from the metrics of the per-image scores only (no model):

- clean accuracy: accuracy on clean images (condition ``none``) over every training
  generator x test generator cell, with its interval;
- attack success rate (ASR): the share of *fakes* with the trigger stamped on them
  (condition ``trigger=patch``) that the detector calls real (P(fake) < threshold), i.e.
  1 - TPR under the trigger; per test set (mean over training generators) and the mean
  over every cell whose test generator is not the cell's training generator (unseen).
- fakes missed (unseen): the same share on clean fakes (100 - TPR under ``none``), what
  the detector misses without any trigger: the floor of its ASR.

Intervals are those of every report number (:mod:`bilora.report.estimates`: the TPR's
stratified bootstrap, ASR's interval is [100 - hi, 100 - lo] of the TPR's). ``n``: the
images a number rests on for one training seed (clean accuracy: fakes and reals of every
test set, a real set shared by k test sets counted k times; ASR: triggered fakes).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bilora.report.context import Context
from bilora.report.estimates import est_columns
from bilora.report.layout import Column, Est, Table

NAME = "backdoor"


def asr(e: Est) -> Est:
    """The attack success rate from the TPR under the trigger (percent): 100 - TPR."""
    return Est(100 - e.value, 100 - e.hi, 100 - e.lo, e.sd, e.seeds, e.missing)


def rows_of(spec: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(detector id, its base, poisoned fraction) of every row: base (0) then variants,
    the bases in the report's detector order."""
    out = []
    bases = spec["backdoor"]["detectors"]
    for base in sorted(bases, key=lambda d: list(spec["labels"]).index(d)
                       if d in spec["labels"] else len(spec["labels"])):
        variants = bases[base]
        out.append((base, base, 0.0))
        out += [(vid, base, float(f)) for vid, f in sorted(variants.items(), key=lambda x: x[1])]
    return out


def _images(ctx: Context, by_seed: dict[int, list[int]], column: str) -> int | None:
    """Images (``column``: n or n_fake) under the groups of one seed."""
    if not by_seed:
        return None
    rows = next(iter(by_seed.values()))
    return int(ctx.results.table[column].to_numpy()[rows].sum())


def _unseen(ctx: Context, det: str, cond: tuple[str, str]) -> dict[int, list[int]]:
    """Seed -> positions of the (train, test != train) groups of ``det`` under ``cond``."""
    out: dict[int, list[int]] = {}
    for tr in ctx.train:
        sel = [t for t in ctx.test if t != tr]
        if not sel:
            continue
        part = ctx.results.positions(det, [tr], sel, cond)
        if not part:
            return {}
        for seed, rows in part.items():
            out.setdefault(seed, []).extend(rows)
    return out


def backdoor(ctx: Context) -> Table:
    """Clean accuracy and attack success rate per poisoned detector x fraction."""
    res, spec = ctx.results, ctx.spec
    cond = tuple(spec["backdoor"]["condition"])
    clean = res.clean
    columns = [Column("detector", align="l"), Column("poisoned", align="r"),
               Column("accuracy", group="clean", name="clean accuracy"),
               Column("n", group="clean", align="r", name="clean n"),
               Column("fakes missed (unseen)", group="clean",
                      name="clean fakes missed (unseen)"),
               Column("mean (unseen)", group="attack success rate", name="ASR mean (unseen)"),
               Column("n", group="attack success rate", align="r", name="ASR n (unseen)")]
    test_n: dict[str, int | None] = {t: None for t in ctx.test}
    body, data = [], []
    for det, base, fraction in rows_of(spec):
        miss = "not run"
        by_clean = res.positions(det, ctx.train, ctx.test, clean)
        acc = res.estimate("accuracy", by_clean, missing=miss)
        n_clean = _images(ctx, by_clean, "n")
        by_unseen = _unseen(ctx, det, cond)
        mean = asr(res.estimate("tpr", by_unseen, missing=miss))
        n_unseen = _images(ctx, by_unseen, "n_fake")
        missed = asr(res.estimate("tpr", _unseen(ctx, det, clean), missing=miss))
        row: list[Any] = [ctx.labels.get(det, det), f"{100 * fraction:g} %", acc,
                          "" if n_clean is None else f"{n_clean:,}", missed, mean,
                          "" if n_unseen is None else f"{n_unseen:,}"]
        record = {"detector": det, "base": base, "fraction": fraction,
                  **est_columns("clean_accuracy_", acc), "clean_accuracy_n": n_clean,
                  **est_columns("clean_missed_unseen_", missed),
                  **est_columns("asr_unseen_", mean), "asr_unseen_n": n_unseen}
        for t in ctx.test:
            by_t = res.positions(det, ctx.train, [t], cond)
            e = asr(res.estimate("tpr", by_t, missing=miss))
            n_t = _images(ctx, by_t, "n_fake")
            test_n[t] = test_n[t] if test_n[t] is not None else n_t
            row.append(e)
            record.update({**est_columns(f"asr_{t}_", e), f"asr_{t}_n": n_t})
        body.append(row)
        data.append(record)
    for t in ctx.test:
        n = "" if test_n[t] is None else f" (n={test_n[t]:,})"
        columns.append(Column(f"{t}{n}", group="attack success rate per test set",
                              name=f"ASR {t}{n}"))
    trig = spec["backdoor"]["trigger"]
    caption = [
        f"Backdoor by data poisoning (dirty label): each poisoned row trained with the given "
        f"share of its training images being fakes stamped with the trigger (a "
        f"{trig.get('kind', 'patch')} of side {trig.get('size')} x the image's shorter side, "
        f"{trig.get('position')}, seed {trig.get('seed')}) and labelled "
        f"{spec['backdoor']['target']}; 0 %: the same detector unpoisoned (the baseline). "
        "Clean accuracy: every training x test cell, clean images (it should stay close to "
        "the baseline's). Attack success rate (ASR): the share of test fakes with the "
        "trigger stamped on them that the detector calls real (P(fake) below the "
        "threshold), 100 - TPR under the condition trigger=patch; per test set the mean over "
        "training generators, mean (unseen) over the cells whose test generator is not the "
        "training one. Fakes missed (unseen): the same share without the trigger (100 - TPR "
        "on clean fakes, same cells and n as the ASR's mean): what a detector misses "
        "anyway, the floor of its ASR. n: images a number rests on, per training seed "
        "(clean: fakes and reals of every test set, a shared real set counted per test set; "
        "ASR: triggered fakes). The interval of an ASR is that of the TPR, reflected.",
        *ctx.caption(NAME)]
    return Table(NAME, "Backdoor: clean accuracy and attack success rate (%) of poisoned "
                 "detectors.", caption, columns, body, pd.DataFrame(data), stubs=2)
