"""plot_history draws what history_ holds."""

from __future__ import annotations

import pytest

from sktransfer import PretrainedImageClassifier
from sktransfer.plotting import plot_history

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def test_plot_history_draws_train_and_valid_curves(cnn, digits_small, tmp_path):
    X, y = digits_small
    clf = PretrainedImageClassifier(
        cnn, image_size=8, freeze_depth=1, max_epochs=3, lr=1e-3, random_state=0
    ).fit(X, y)
    ax = plot_history(clf)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["train loss", "valid loss"]
    assert list(ax.get_lines()[0].get_ydata()) == [h["train_loss"] for h in clf.history_]
    ax.figure.savefig(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 1000
    ticks = [t for t in ax.get_xticks() if 1 <= t <= len(clf.history_)]
    assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs only
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()][-1] == "valid accuracy"
    ax.figure.canvas.draw()  # the legend sits below the axes, off the curves
    box = legend.get_window_extent()
    assert box.y1 <= ax.get_window_extent().y0


def test_plot_history_needs_a_fitted_estimator(cnn):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        plot_history(PretrainedImageClassifier(cnn))
