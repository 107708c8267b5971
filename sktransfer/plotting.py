"""``plot_history``: train/valid curves of a fitted estimator without writing matplotlib code.

matplotlib is optional: ``pip install "sktransfer[plot]"``.
"""

from __future__ import annotations

import math

from sklearn.utils.validation import check_is_fitted

_METRICS = {"valid_acc": "valid accuracy", "valid_f1": "valid F1", "valid_r2": "valid R²"}
#: metrics that live in [0, 1] (R² only has the upper bound)
_UNIT_INTERVAL = ("valid_acc", "valid_f1")


def _metric_limits(metric, values):
    """y limits for the metric axis: a little room around the values, never above 1 (no
    metric here exceeds it) and, for accuracy and F1, never below 0. matplotlib's own
    autoscaling put a single accuracy of 1.0 on an axis from 0.945 to 1.050."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = max(0.05 * (high - low), 0.02)
    bottom = low - pad
    if metric in _UNIT_INTERVAL:
        bottom = max(0.0, bottom)
    return bottom, min(1.0, high + pad)


def plot_history(est, ax=None, *, title=None):
    """Plot ``est.history_``: train/valid loss per epoch and the validation metric.

    Parameters
    ----------
    est : fitted PretrainedImageClassifier or PretrainedTextClassifier
        Also accepts a fitted ``GridSearchCV`` (its ``best_estimator_`` is plotted).
    ax : matplotlib Axes or None
        Where to draw the losses; a new figure when None. The validation metric
        (accuracy, F1 or R², as the estimator records it) goes on a twin y-axis, which
        never goes above 1 (nor, for accuracy and F1, below 0).
    title : str or None

    Returns
    -------
    ax : matplotlib Axes
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('plot_history needs matplotlib: pip install "sktransfer[plot]"') from exc
    est = getattr(est, "best_estimator_", est)
    check_is_fitted(est, "history_")
    history = est.history_
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, style, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    metric = next((k for k in _METRICS if any(k in row for row in history)), None)
    lines, labels = ax.get_legend_handles_labels()
    if metric is not None:
        ax2 = ax.twinx()
        label = _METRICS[metric]
        values = [row.get(metric) for row in history]
        ax2.plot(epochs, values, "-^", color="tab:green", label=label)
        limits = _metric_limits(metric, values)
        if limits is not None:
            ax2.set_ylim(*limits)
        ax2.set_ylabel(label)
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    if len(history) == 1 and "n_iter" in history[0]:
        ax.set_title(
            title or f"frozen features: head fitted in {history[0]['n_iter']} solver steps"
        )
    else:
        ax.set_title(title or f"{type(est).__name__}, freeze_depth={est.freeze_depth!r}")
    # the legend below the axes, never over the curves; the figure makes room for it
    ax.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18),
              ncol=max(1, len(labels)), frameon=False)  # fmt: skip
    ax.figure.tight_layout()
    return ax
