"""Who owns ``module_``: each estimator its own network, paid for only when someone looks.

A frozen estimator on the CPU runs the registry's loaded backbone (the template) itself:
a grid search makes one such fit per candidate and a deep copy of EfficientNet-Lite0 or
MiniLM costs 25-100 ms and its size in memory each time. The library never writes to the
template, so sharing is safe as long as nobody else can reach it. ``module_`` is the one
door through which anybody else can: reading it hands out the estimator's own copy first
(copy on access), so editing ``a.module_`` in place changes ``a`` and nothing else, not
another estimator and not the estimators fitted later in the process.

A network that has been handed out can be edited by its holder at any time, also through
``tensor.data`` (which no version counter sees), so from then on the feature cache's weight
digest of that network is recomputed before each use instead of trusting its memo; a
network that was never handed out keeps the memo (nothing else can change it).
"""

from __future__ import annotations

import copy

from sktransfer.cache.keys import forget_digest


class CopiedOnAccess:
    """A fitted attribute stored in the instance's ``__dict__`` under its own name and
    handed out through ``hand_out(stored) -> (value, store it?)`` on every read; set and
    delete as a plain attribute. ``vars(est)`` and ``check_is_fitted`` see it as usual."""

    def __init__(self, hand_out):
        self.hand_out = hand_out

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, est, owner=None):
        if est is None:
            return self
        try:
            stored = est.__dict__[self.name]
        except KeyError:
            raise AttributeError(
                f"{type(est).__name__!r} object has no attribute {self.name!r}"
            ) from None
        value, keep = self.hand_out(stored)
        if keep:
            est.__dict__[self.name] = value
        return value

    def __set__(self, est, value):
        est.__dict__[self.name] = value

    def __delete__(self, est):
        try:
            del est.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


def _hand_out_network(net):
    """A shared template becomes the estimator's own copy; either way the network is marked
    handed out (its weight digest is recomputed from then on)."""
    copied = getattr(net, "shares_template", False)
    if copied:
        net = copy.deepcopy(net)  # the template's tensors, now this estimator's own
        net.shares_template = False
    net.handed_out = True
    return net, copied


def _hand_out_preprocessing(prep):
    """A copy of ``prep`` whose tokenizer (if any) is its own, marked as handed out (the
    cache then keys the tokenizer by its state); once per estimator."""
    if getattr(prep, "handed_out", False):
        return prep, False
    prep = copy.copy(prep)
    if getattr(prep, "tokenizer", None) is not None:
        prep.tokenizer = copy.deepcopy(prep.tokenizer)
    object.__setattr__(prep, "handed_out", True)
    return prep, True


class OwnedModuleMixin:
    """``module_``: the stored network, privately copied on first access when it is the
    shared template; the library reads it with :meth:`_net`."""

    module_ = CopiedOnAccess(_hand_out_network)

    def _net(self):
        """The fitted network without handing it out (no copy); the weight digests of a
        network that was handed out are recomputed (see the module docstring)."""
        net = self.__dict__["module_"]
        if getattr(net, "handed_out", False):
            forget_digest(net)
        return net


class OwnedPreprocessingMixin:
    """``preprocessing_``: a text model's tokenizer is the registry's loaded one, shared by
    every estimator of that backbone; reading ``preprocessing_`` hands out a private copy
    first (copy on access, as ``module_``), so an edit of one estimator's tokenizer changes
    that estimator only. The library reads it with :meth:`_prep`.

    A handed-out tokenizer can be edited at any time, so the feature cache keys it by its
    state (:func:`sktransfer.cache.keys.prep_identity`), not by its name."""

    preprocessing_ = CopiedOnAccess(_hand_out_preprocessing)

    def _prep(self):
        """The fitted preprocessing without handing it out (no copy)."""
        return self.__dict__["preprocessing_"]


def read_network(est):
    """``est``'s fitted network without handing it out: no private copy, no digest reset.
    For library code that reads it and never changes it (saving, exporting)."""
    return est.__dict__["module_"]


def read_preprocessing(est):
    """``est``'s fitted preprocessing without handing it out (no tokenizer copy)."""
    return est.__dict__["preprocessing_"]
