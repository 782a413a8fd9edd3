"""Detection metrics from per-image scores. Never imports a model class.

``P(fake) >= threshold`` is a fake prediction; an image without a label from the
detector (NaN score, the paper's unmapped token) counts as wrong. Metrics:

- ``accuracy``, ``f1`` (fake is the positive class),
- ``auc``: ROC AUC from the scores (the threshold-free one),
- ``auc_hard``: ROC AUC from the hard 0/1 predictions, as the paper computed it
  (it equals balanced accuracy),
- ``ap``: average precision from the scores,
- ``pd@5%``, ``pd@1%``: probability of detection (TPR) at 5 % and 1 % false
  positives (Ricker et al.).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import auc, average_precision_score, roc_curve

KEYS = ["detector", "train", "test", "perturbation", "level"]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, fpr_target: float) -> float:
    """Largest TPR whose FPR does not exceed ``fpr_target`` (on the ROC's operating points)."""
    ok = fpr <= fpr_target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def compute(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All metrics for one set of (label, P(fake)) pairs (one ROC curve, reused)."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    nan = np.isnan(s)
    pred = np.where(nan, 1 - y, s >= threshold).astype(int)
    s_filled = np.where(nan, 0.5, s)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    out = {"n": int(len(y)), "n_fake": n_pos, "unlabelled": int(nan.sum()),
           "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
           "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}
    if n_pos and n_neg:
        fpr, tpr, _ = roc_curve(y, s_filled)
        tnr = 1 - fp / n_neg
        out.update({"auc": float(auc(fpr, tpr)),
                    # ROC AUC of the hard 0/1 predictions = (TPR + TNR) / 2
                    "auc_hard": (tp / n_pos + tnr) / 2,
                    "ap": float(average_precision_score(y, s_filled)),
                    "pd@5%": tpr_at_fpr(fpr, tpr, 0.05),
                    "pd@1%": tpr_at_fpr(fpr, tpr, 0.01)})
    else:
        out.update({k: float("nan") for k in ("auc", "auc_hard", "ap", "pd@5%", "pd@1%")})
    return out


def metrics_table(scores: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """One row of metrics per (detector, train, test, perturbation, level).

    ``scores`` holds per-image rows with columns ``detector``, ``train``, ``generator``
    (the test set), ``perturbation``, ``level``, ``label``, ``p_fake``.
    """
    rows = []
    df = scores.rename(columns={"generator": "test"})
    for key, g in df.groupby(KEYS, sort=False):
        rows.append(dict(zip(KEYS, key, strict=True)) | compute(g["label"].to_numpy(),
                                                                g["p_fake"].to_numpy(), threshold))
    return pd.DataFrame(rows)
