"""One fine-tune, unchanged under ``torchrun --nproc_per_node N`` (tests/test_ddp.py).

Writes ``rank<R>.json`` into the folder given as argv[1]: the fitted weights' digest and
values, history_, and how many times DistributedDataParallel.forward ran.
"""

import json
import os
import sys

import numpy as np
from torch.nn.parallel import DistributedDataParallel

import sktransfer
from sktransfer.runtime.process_group import is_writer

calls = {"ddp_forward": 0}
_forward = DistributedDataParallel.forward


def counted(self, *args, **kwargs):
    calls["ddp_forward"] += 1
    return _forward(self, *args, **kwargs)


DistributedDataParallel.forward = counted

if __name__ == "__main__":
    out, model_dir = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from conftest import make_texts

    X, y = make_texts(88)
    weights = np.where(np.asarray(y) == y[0], 1.0, 2.0)  # unequal: the loss scaling must hold
    clf = sktransfer.PretrainedTextClassifier(
        model_dir, freeze_depth=-2, lr=1e-3, max_epochs=4, batch_size=8,
        early_stopping=True, validation_fraction=0.2, n_iter_no_change=2, random_state=0,
        device="cpu",
    ).fit(X, y, sample_weight=weights)
    net = clf.module_
    rank = int(os.environ.get("RANK", "0"))
    record = {
        "rank": rank,
        "world": int(os.environ.get("WORLD_SIZE", "1")),
        "weights": [p.detach().double().sum().item() for p in net.parameters()],
        "history": clf.history_,
        "ddp_forward": calls["ddp_forward"],
        "proba": clf.predict_proba(X[:8]).tolist(),
        "writer": is_writer(),
    }
    sktransfer.save(clf, os.path.join(out, "model.skt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
