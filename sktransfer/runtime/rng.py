"""One fit's randomness: ``random_state`` in, the caller's generators untouched.

What draws random numbers in a fine-tune: the head's initialisation, dropout, the
training augmentations and user code run per sample. Data order and the worker seeds
come from a ``torch.Generator`` of the fit's own (:mod:`sktransfer.training.loop`), but
dropout (``nn.functional.dropout``) takes no generator: it draws from torch's global
one, which every thread of the process shares.

So a fit that draws from the global generators borrows them: under one process-wide
lock it saves torch's (CPU, and the fit's CUDA device), numpy's and Python's global
states, seeds them from ``random_state``, and restores them when it ends, error or
Ctrl-C included. Two fits in two threads then give exactly what they give one after
the other, and the caller finds its generators where it left them. The cost: fine-tunes
in threads of one process run one at a time (processes, joblib's default, are
unaffected); frozen fits draw nothing and do not take the lock.
"""

from __future__ import annotations

import contextlib
import random
import threading

import numpy as np
import torch

_LEASE = threading.RLock()


@contextlib.contextmanager
def seeded_globals(seed):
    """Seed numpy's and Python's global RNGs (for user augmentations); restore them after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def borrowed_generators(seed, device, *, draws=True):
    """Run a fit's body with the global generators seeded from ``seed`` (see the module
    docstring); ``draws=False`` (a frozen fit) leaves them alone and takes no lock."""
    if not draws:
        yield
        return
    device = torch.device(device)
    with _LEASE, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with seeded_globals(seed):
            yield
