"""The fit-state object: what one ``fit`` knows, passed down instead of long argument lists."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from sktransfer._estimator.targets import Encoded, Target


@dataclasses.dataclass
class FitState:
    """One fit's inputs and decisions (built in ``fit``, read by the skeleton's steps).

    ``items``/``kind``: the validated input; ``target``/``y``: the target piece and the
    encoded ``y``; ``sample_weight``: final per-sample weights (``class_weight`` included);
    ``backbone``/``prep``: the resolved backbone and its preprocessing; ``n_frozen``: blocks
    kept frozen; ``split``: ``(train_idx, valid_idx or None)`` when fine-tuning.
    """

    items: list
    kind: str
    target: Target
    y: Encoded
    sample_weight: np.ndarray
    backbone: Any
    prep: Any
    n_frozen: int
    device: torch.device
    seed: int
    split: tuple | None = None
    warm_net: Any = None  # warm_start / partial_fit: the network to train on

    @property
    def n_blocks(self) -> int:
        return self.backbone.n_blocks

    @property
    def frozen(self) -> bool:
        return self.n_frozen == self.n_blocks
