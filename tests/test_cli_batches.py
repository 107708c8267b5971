"""``sktransfer predict``'s model calls: whole micro-batches per call (behaviour, not time)."""

from __future__ import annotations

import io

import numpy as np
from conftest import make_cnn

from sktransfer import PretrainedImageClassifier
from sktransfer.cli.scoring import DEFAULT_CHUNK, call_size, predict_stream


def _spy_calls(clf):
    calls = []
    real = clf.predict_proba

    def spy(X):
        calls.append(len(X))
        return real(X)

    clf.predict_proba = spy  # (Columns binds the method when predict_stream starts)
    return calls


def test_a_call_holds_whole_automatic_micro_batches(digits_small):
    X, y = digits_small
    X64 = np.repeat(np.repeat(np.resize(X, (300, *X.shape[1:])), 8, axis=1), 8, axis=2)  # 64 px
    clf = PretrainedImageClassifier(make_cnn(), image_size=64, random_state=0)
    clf.fit(X64[:20], y[:20])
    assert call_size(clf, DEFAULT_CHUNK) == 6 * 49  # the CPU rule at 64 px: 49 per forward
    calls = _spy_calls(clf)
    out = io.StringIO()
    n_ok, n_bad = predict_stream(
        clf, ((f"x{i}", a) for i, a in enumerate(X64)), out, batch_size=DEFAULT_CHUNK,
        progress=False,
    )  # fmt: skip
    assert (n_ok, n_bad) == (300, 0) and calls == [294, 6]
    rows = out.getvalue().splitlines()
    assert rows[1].startswith("x0,") and rows[-1].startswith("x299,")  # every item, in order
    # a forced micro-batch (--batch-size) is the call size as given
    clf.set_params(inference_batch_size=10)
    calls.clear()
    predict_stream(clf, ((i, a) for i, a in enumerate(X64)), io.StringIO(), batch_size=256,
                   progress=False)  # fmt: skip
    assert calls == [256, 44]


def test_call_size_leaves_other_models_alone():
    class Other:
        def get_params(self):
            return {"batch_size": 8}

    assert call_size(Other(), 256) == 256
    assert call_size(object(), 100) == 100
