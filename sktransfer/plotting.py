"""``plot_history``: train/valid curves of a fitted estimator without writing matplotlib code.

matplotlib is optional: ``pip install "sktransfer[plot]"``.
"""

from __future__ import annotations

from sklearn.utils.validation import check_is_fitted


def plot_history(est, ax=None, *, title=None):
    """Plot ``est.history_``: train/valid loss per epoch and validation accuracy.

    Parameters
    ----------
    est : fitted PretrainedImageClassifier or PretrainedTextClassifier
        Also accepts a fitted ``GridSearchCV`` (its ``best_estimator_`` is plotted).
    ax : matplotlib Axes or None
        Where to draw the losses; a new figure when None. Validation accuracy
        goes on a twin y-axis.
    title : str or None

    Returns
    -------
    ax : matplotlib Axes
    """
    try:
        import matplotlib.pyplot as plt
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
    accuracy = [row.get("valid_acc") for row in history]
    lines, labels = ax.get_legend_handles_labels()
    if any(a is not None for a in accuracy):
        ax2 = ax.twinx()
        ax2.plot(epochs, accuracy, "-^", color="tab:green", label="valid accuracy")
        ax2.set_ylabel("valid accuracy")
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    if len(history) == 1 and "n_iter" in history[0]:
        ax.set_title(
            title or f"frozen features: head fitted in {history[0]['n_iter']} L-BFGS steps"
        )
    else:
        ax.set_title(title or f"{type(est).__name__}, freeze_depth={est.freeze_depth!r}")
    ax.legend(lines, labels, loc="best")
    return ax
