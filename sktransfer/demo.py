"""``sktransfer demo``: the main job end to end, offline, on data every install has.

scikit-learn's handwritten digits (1,797 8x8 images) are classified with the
packaged ImageNet EfficientNet-Lite0: a GridSearchCV over ``freeze_depth`` x
``lr`` (cheap: backbone features and frozen-prefix activations are computed once
and reused across folds and grid points), the test accuracy printed next to a
plain ``LogisticRegression`` on raw pixels, the best model saved with joblib,
loaded back and re-scored.
"""

from __future__ import annotations

import os
import tempfile
import time


def run_demo(verbose: int = 1, out_dir=None, image_size: int = 64, max_epochs: int = 3) -> dict:
    """Run the demo; returns the accuracies, the chosen parameters and timings."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, train_test_split

    from sktransfer import PretrainedImageClassifier, cache_info

    def say(*args):
        if verbose:
            print(*args, flush=True)

    t0 = time.perf_counter()
    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)  # (n, 8, 8) grey
    labels = np.asarray([f"digit {d}" for d in digits.target], dtype=object)
    X_train, X_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=0
    )
    say(f"digits: {len(X_train)} train / {len(X_test)} test images (8x8, upscaled to {image_size})")

    pixels = LogisticRegression(max_iter=5000).fit(X_train.reshape(len(X_train), -1), y_train)
    baseline = pixels.score(X_test.reshape(len(X_test), -1), y_test)

    grid = {"freeze_depth": ["all", -2], "lr": [3e-4, 1e-3]}
    search = GridSearchCV(
        PretrainedImageClassifier(
            image_size=image_size, max_epochs=max_epochs, batch_size=32, random_state=0
        ),
        grid,
        cv=3,
    )
    say(f"GridSearchCV over {grid} with 3 folds (backbone: packaged efficientnet_lite0) ...")
    t_search = time.perf_counter()
    search.fit(X_train, y_train)
    t_search = time.perf_counter() - t_search
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        say(f"  {params}  cv accuracy {score:.3f}")
    accuracy = search.score(X_test, y_test)
    info = cache_info()
    say(f"best: {search.best_params_}  ({t_search:.0f} s for {len(grid['lr']) * 2 * 3 + 1} fits;")
    say(f"  backbone forwards per unique image: {info['backbone_forwards'] / len(images):.2f})")
    say(f"test accuracy  sktransfer: {accuracy:.3f}   LogisticRegression on pixels: {baseline:.3f}")

    out_dir = out_dir or tempfile.mkdtemp(prefix="sktransfer-demo-")
    path = os.path.join(out_dir, "model.joblib")
    joblib.dump(search.best_estimator_, path)
    reloaded = joblib.load(path)
    reloaded_accuracy = reloaded.score(X_test, y_test)
    size_mb = os.path.getsize(path) / 2**20
    say(f"saved {path} ({size_mb:.1f} MB); reloaded test accuracy {reloaded_accuracy:.3f}")
    total = time.perf_counter() - t0
    say(f"done in {total:.0f} s")
    return {
        "accuracy": accuracy,
        "baseline_accuracy": baseline,
        "reloaded_accuracy": reloaded_accuracy,
        "best_params": search.best_params_,
        "model_path": path,
        "search_seconds": t_search,
        "total_seconds": total,
    }
