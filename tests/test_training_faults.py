"""Faults during fit: Ctrl-C (in process and a real SIGINT to a child), divergence, NaN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import make_cnn
from sklearn.exceptions import FitFailedWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils.validation import check_is_fitted
from torch import nn

from sktransfer import PretrainedImageClassifier
from sktransfer.training.loop import NonFiniteLossError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TripWire(nn.Module):
    """Identity that raises ``KeyboardInterrupt`` on its ``n``-th training forward,
    as a Ctrl-C arriving mid-epoch would."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.calls = 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.n:
                raise KeyboardInterrupt
        return x


def _tripping_cnn(n):
    cnn = make_cnn()
    return nn.Sequential(*cnn[:3], nn.Sequential(TripWire(n), cnn[3]))


def _clf(backbone, **kw):
    kw = {"image_size": 8, "random_state": 0, "batch_size": 32, "max_epochs": 3,
          "early_stopping": True, **kw}  # fmt: skip
    return PretrainedImageClassifier(backbone, freeze_depth=0, **kw)


def test_ctrl_c_propagates_out_of_fit_and_leaves_it_unfitted(digits_small):
    X, y = digits_small
    clf = _clf(_tripping_cnn(n=4))  # the 4th training batch: inside epoch 1
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X, y)
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)


def test_ctrl_c_stops_a_grid_search(digits_small):
    X, y = digits_small
    trip = _tripping_cnn(n=4)
    search = GridSearchCV(_clf(trip), {"lr": [1e-3, 1e-2]}, cv=2, error_score="raise")
    with pytest.raises(KeyboardInterrupt):
        search.fit(X, y)
    assert not hasattr(search, "best_estimator_")
    # also with the default error_score=nan, which turns exceptions into warnings
    search = GridSearchCV(_clf(_tripping_cnn(n=4)), {"lr": [1e-3, 1e-2]}, cv=2)
    with pytest.raises(KeyboardInterrupt):
        search.fit(X, y)


def test_early_stopping_still_ends_training_normally(digits_small):
    X, y = digits_small
    clf = _clf(make_cnn(), lr=0.03, lr_schedule="constant", max_epochs=30, n_iter_no_change=1)
    clf.fit(X, y)
    assert len(clf.history_) < 30  # stopped early, and fit returned a fitted model
    assert sum(row["best"] for row in clf.history_) == 1
    check_is_fitted(clf)


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np, torch
    from torch import nn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sktransfer import PretrainedImageClassifier

    class Slow(nn.Module):  # a slow block, so that the signal lands mid-epoch
        def forward(self, x):
            if torch.is_grad_enabled():
                print("training", flush=True)
                time.sleep(0.05)
            return x

    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), Slow(),
                        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    d = load_digits()
    X, y = (d.images * 16).clip(0, 255).astype(np.uint8)[:200], d.target[:200]
    clf = PretrainedImageClassifier(net, freeze_depth=0, max_epochs=50, batch_size=8,
                                    image_size=8, random_state=0, head_init="random")
    est = GridSearchCV(clf, {"lr": [1e-3, 1e-2]}, cv=2) if sys.argv[1] == "grid" else clf
    try:
        est.fit(X, y)
    except KeyboardInterrupt:
        fitted = hasattr(clf, "module_") or hasattr(est, "best_estimator_")
        print("INTERRUPTED fitted=%s" % fitted, flush=True)
        sys.exit(3)
    print("RETURNED", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["fit", "grid"])
def test_real_sigint_mid_epoch_stops_the_child(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in proc.stdout:  # wait until a training forward has started
            if line.startswith("training"):
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "RETURNED" not in out
    assert "INTERRUPTED fitted=False" in out
    assert proc.returncode == 3


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_diverging_fine_tune_raises_and_leaves_no_model(digits_small, optimizer):
    X, y = digits_small
    clf = _clf(make_cnn(), lr=1e4, optimizer=optimizer, head_init="random")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch \d+ .*lower lr"):
        clf.fit(X, y)
    assert isinstance(NonFiniteLossError("x"), ValueError)
    with pytest.raises(NotFittedError):
        clf.predict_proba(X[:2])


def test_diverging_fine_tune_in_a_search_scores_nan_not_a_nan_model(digits_small):
    X, y = digits_small
    search = GridSearchCV(
        _clf(make_cnn(), head_init="random", max_epochs=2), {"lr": [1e4, 1e-3]}, cv=2
    )
    with pytest.warns(FitFailedWarning, match="2 fits failed"):
        search.fit(X, y)
    assert search.best_params_ == {"lr": 1e-3}
    assert np.isfinite(search.predict_proba(X[:5])).all()


class NaNAfter(nn.Module):
    """Frozen features that are NaN for samples whose first pixel is bright."""

    def forward(self, x):
        out = x.flatten(1)[:, :16].clone()
        out[x[:, 0, 0, 0] > 1.5] = float("nan")
        return out


def test_nan_features_are_refused_naming_the_sample(digits_small):
    X, y = digits_small
    X = X.copy()
    X[:, 0, 0] = 0
    X[7, 0, 0] = 255  # only sample 7 makes NaN features
    clf = PretrainedImageClassifier(nn.Sequential(NaNAfter()), image_size=8, random_state=0)
    with pytest.raises(ValueError, match="Sample 7: the backbone's output has NaN"):
        clf.fit(X, y)
    clf.fit(np.delete(X, 7, 0), np.delete(y, 7))
    with pytest.raises(ValueError, match="Sample 2: the network's output has NaN"):
        clf.predict_proba(np.stack([X[0], X[1], X[7]]))
