"""Values every layer block of one forward reads, computed once per forward.

A model's own ``forward`` computes some things once and hands them to all its layers:
the attention mask, a relative-position bias or bucket table, rotary embeddings. Split
into blocks, each layer block would recompute them. :func:`once_per_forward` keeps the
last value of each such computation for as long as the batch's 0/1 token ``mask``
tensor lives (it flows unchanged through every block of one forward, in the
:class:`~sktransfer.backbones.base.TextState`), so the blocks compute it once, as the
model does.

Safety: a value is reused only when it provably equals a recomputation.

* The key holds everything it is computed from besides the mask: the caller's ``key``
  (shapes, dtypes, devices, settings), the grad / inference / autocast modes, and for
  every tensor it reads (``tensors``: weights, buffers) its identity, storage, in-place
  ``_version`` counter and ``requires_grad``; an optimizer step, ``load_state_dict`` or
  ``.to()`` changes one of these and so invalidates the value.
* A value that autograd would record (grad enabled and a ``tensors`` entry requiring
  grad) is never kept: it would carry a graph that the first backward frees, and it
  would not see the weights the optimizer updates. Training with the embeddings block
  trainable recomputes per layer; a frozen one (or inference) is memoised.
* Nothing is kept while tracing or compiling (no state in a graph), nor for an
  inference-mode weight (no version counter).
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["forget_all", "once_per_forward"]

#: ``(name, id(owner)) -> (weakref to mask, weakref to owner, key, value)``
_MEMO: dict = {}


def _forget(ref) -> None:
    """Weakref callback: the mask of these entries is gone, and with it their forward."""
    for slot, entry in list(_MEMO.items()):
        if entry[0] is ref:
            _MEMO.pop(slot, None)


def forget_all() -> None:
    """Drop every memoised value (they are also dropped with their masks)."""
    _MEMO.clear()


def _tensor_key(t: torch.Tensor) -> tuple:
    return (id(t), t.data_ptr(), t._version, t.requires_grad, t.dtype, t.device)


def once_per_forward(name, owner, mask: torch.Tensor, key, compute, tensors=()):
    """``compute()``, or its value from an earlier block of the same forward.

    Parameters
    ----------
    name : hashable
        What is computed (one memo slot per ``name`` and ``owner``).
    owner : object
        The module or config it is computed for (held weakly).
    mask : torch.Tensor
        The forward's ``(n, seq)`` 0/1 token mask: the value lives as long as it does.
    key : hashable
        Everything else the value depends on that ``tensors`` and the modes do not
        cover (shapes, dtypes, devices, the builder function, settings).
    compute : callable
        ``compute() -> value``, called when there is no valid memoised value.
    tensors : iterable of torch.Tensor, default=()
        The weights and buffers ``compute`` reads.

    Returns
    -------
    object
        What ``compute()`` returns (the same object for every block of one forward).
    """
    tensors = tuple(tensors)
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return compute()
    grad = torch.is_grad_enabled()
    if grad and any(t.requires_grad for t in tensors):
        return compute()  # autograd records it: recompute, never reuse a graph
    if any(t.is_inference() for t in tensors):
        return compute()  # no version counter to see an in-place update by
    device = mask.device.type
    full_key = (
        key,
        None if mask.is_inference() else mask._version,
        grad,
        torch.is_inference_mode_enabled(),
        torch.is_autocast_enabled(device),
        torch.get_autocast_dtype(device),
        tuple(_tensor_key(t) for t in tensors),
    )
    slot = (name, id(owner))
    entry = _MEMO.get(slot)
    if entry is not None and entry[0]() is mask and entry[1]() is owner and entry[2] == full_key:
        return entry[3]
    value = compute()
    _MEMO[slot] = (weakref.ref(mask, _forget), weakref.ref(owner), full_key, value)
    return value
