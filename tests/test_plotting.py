"""plot_history draws what history_ holds."""

from __future__ import annotations

import pytest

from sktransfer import PretrainedImageClassifier
from sktransfer.plotting import plot_history

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _fine_tuned(cls, cnn, epochs):
    """A fine-tune with a validation split (history_ has valid_* rows) at any n."""
    return cls(cnn, image_size=8, freeze_depth=1, max_epochs=epochs, lr=1e-3, random_state=0,
               early_stopping=True)  # fmt: skip


def test_plot_history_draws_train_and_valid_curves(cnn, digits_small, tmp_path):
    X, y = digits_small
    clf = _fine_tuned(PretrainedImageClassifier, cnn, 3).fit(X, y)
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


def _metric_axis(ax):
    twins = [other for other in ax.figure.axes if other is not ax]
    assert len(twins) == 1
    return twins[0]


def test_accuracy_axis_never_goes_above_one(cnn, digits_small):
    X, y = digits_small
    # one epoch: a single accuracy point, which matplotlib alone spread over 0.945..1.050
    clf = _fine_tuned(PretrainedImageClassifier, cnn, 1).fit(X, y)
    for accuracy in (clf.history_[0]["valid_acc"], 1.0, 0.0):
        clf.history_[0]["valid_acc"] = accuracy
        metric_ax = _metric_axis(plot_history(clf))
        metric_ax.figure.canvas.draw()
        bottom, top = metric_ax.get_ylim()
        assert 0.0 <= bottom < accuracy or accuracy == 0.0
        assert accuracy <= top <= 1.0 and bottom < top
        shown = [t for t in metric_ax.get_yticks() if bottom <= t <= top]
        assert shown and max(shown) <= 1.0
    matplotlib.pyplot.close("all")


def test_r2_axis_may_go_below_zero_but_not_above_one(cnn, digits_small):
    from sktransfer import PretrainedImageRegressor

    X, y = digits_small
    reg = _fine_tuned(PretrainedImageRegressor, cnn, 2).fit(X, y.astype(float))
    assert all("valid_r2" in row for row in reg.history_)
    reg.history_[0]["valid_r2"], reg.history_[1]["valid_r2"] = -0.5, 0.999
    bottom, top = _metric_axis(plot_history(reg)).get_ylim()
    assert bottom < -0.5 and 0.999 < top <= 1.0
    matplotlib.pyplot.close("all")


def test_frozen_model_plots_its_one_point_without_a_metric_axis(cnn, digits_small):
    X, y = digits_small
    clf = PretrainedImageClassifier(cnn, image_size=8).fit(X, y)
    ax = plot_history(clf)
    assert ax.figure.axes == [ax]  # no validation metric recorded: no twin axis
    assert "frozen features" in ax.get_title()
    matplotlib.pyplot.close("all")
