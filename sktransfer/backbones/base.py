"""The loaded-backbone contract every source adapter returns.

A :class:`Backbone` is an ordered list of named blocks (input -> output) plus a
``pool`` that turns the last block's output into an ``(n, feature_dim)`` tensor,
and the preprocessing the weights expect. ``freeze_depth`` counts ``blocks``.

Image backbones: every block maps a tensor to a tensor; block 0 takes a float
batch ``(n, 3, H, W)`` normalised with ``preprocessing.mean/std``.

Text backbones: block 0 takes the tokenizer's batch as a dict of tensors
(``input_ids``, ``attention_mask`` and, if the model uses them,
``token_type_ids``) and every block returns a :class:`TextState`; later blocks map
``TextState -> TextState``; ``pool`` maps a ``TextState`` to ``(n, d)``.

A backbone a source could not split (``Backbone.unsplit_reason`` set, e.g. a Hugging
Face architecture kept whole) is one block: :func:`warn_if_unsplit` tells a user who
asks for a partial freeze that it cannot reach inside.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from sktransfer.inputs.preprocessing import ImagePreprocessing, TextPreprocessing


class TextState(NamedTuple):
    """What flows between text blocks: hidden states and the 0/1 token mask."""

    hidden: torch.Tensor  # (n, seq, d)
    attention_mask: torch.Tensor  # (n, seq), 1 = real token


@dataclass
class Backbone:
    """A loaded backbone, ready to be split into frozen and trainable blocks."""

    name: str  # registry name, path or class name: shown to users
    modality: str  # "image" | "text" | "vector" (user module on 2-D numeric input)
    blocks: list[tuple[str, nn.Module]]
    pool: nn.Module
    feature_dim: int | None  # None: found by a forward pass at fit time
    preprocessing: ImagePreprocessing | TextPreprocessing | None
    source: dict = field(default_factory=dict)  # how to rebuild it (persistence / cache key)
    shared: bool = False  # the registry's loaded template itself (never train or move it)
    unsplit_reason: str | None = None  # why it is one block (None: split into its blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def split(self) -> bool:
        """Whether the source split the model into blocks (False: one unsplittable block)."""
        return self.unsplit_reason is None and self.n_blocks > 1


def warn_if_unsplit(backbone: Backbone, freeze_depth, stacklevel: int = 3) -> bool:
    """Warn when a partial ``freeze_depth`` meets a backbone that is one block.

    ``"all"`` and ``0`` mean the same on any backbone (freeze everything, train
    everything); any other value asks to freeze part of the model, which one block
    cannot honour: it is frozen or trained whole (or the value is out of range).

    Parameters
    ----------
    backbone : Backbone
        The resolved backbone (before ``resolve_freeze_depth``).
    freeze_depth : "all" or int
        The estimator's ``freeze_depth`` parameter.
    stacklevel : int, default=3
        Passed to :func:`warnings.warn` (3: the caller of the estimator's ``fit``).

    Returns
    -------
    bool
        Whether a :class:`UserWarning` was issued.

    Examples
    --------
    >>> import warnings
    >>> from torch import nn
    >>> one = Backbone("gpt2", "text", [("model", nn.Identity())], nn.Identity(), 8, None,
    ...                unsplit_reason="gpt2 has no block split")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_unsplit(one, -2), warn_if_unsplit(one, "all"), warn_if_unsplit(one, 0)
    (True, False, False)
    >>> "one block" in str(caught[0].message)
    True
    """
    if isinstance(freeze_depth, str) or isinstance(freeze_depth, bool):
        return False  # "all" (anything else is resolve_freeze_depth's error)
    if not isinstance(freeze_depth, numbers.Integral) or int(freeze_depth) == 0:
        return False
    if backbone.split:
        return False
    why = f" ({backbone.unsplit_reason})" if backbone.unsplit_reason else ""
    warnings.warn(
        f"freeze_depth={int(freeze_depth)} asks for a partial freeze, but backbone "
        f"{backbone.name!r} is one block{why}, so the freeze cannot reach inside it: "
        "freeze_depth can only freeze it whole ('all') or train it whole (0)",
        UserWarning,
        stacklevel=stacklevel,
    )
    return True
