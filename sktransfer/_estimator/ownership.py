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


class OwnedModuleMixin:
    """``module_`` as a property: the stored network, privately copied on first access
    when it is the shared template; the library reads it with :meth:`_net`."""

    @property
    def module_(self):
        try:
            net = self.__dict__["module_"]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute 'module_'"
            ) from None
        if getattr(net, "shares_template", False):
            net = copy.deepcopy(net)  # the template's tensors, now this estimator's own
            net.shares_template = False
            self.__dict__["module_"] = net
        net.handed_out = True
        return net

    @module_.setter
    def module_(self, net):
        self.__dict__["module_"] = net

    @module_.deleter
    def module_(self):
        try:
            del self.__dict__["module_"]
        except KeyError:
            raise AttributeError("module_") from None

    def _net(self):
        """The fitted network without handing it out (no copy); the weight digests of a
        network that was handed out are recomputed (see the module docstring)."""
        net = self.__dict__["module_"]
        if getattr(net, "handed_out", False):
            forget_digest(net)
        return net


def _private_preprocessing(prep):
    """A copy of ``prep`` whose tokenizer (if any) is its own, marked as handed out."""
    prep = copy.copy(prep)
    if getattr(prep, "tokenizer", None) is not None:
        prep.tokenizer = copy.deepcopy(prep.tokenizer)
    object.__setattr__(prep, "handed_out", True)  # (the cache then keys its tokenizer's state)
    return prep


class OwnedPreprocessingMixin:
    """``preprocessing_`` as a property: a text model's tokenizer is the registry's loaded
    one, shared by every estimator of that backbone; reading ``preprocessing_`` hands out a
    private copy first (copy on access, as ``module_``), so an edit of one estimator's
    tokenizer changes that estimator only. The library reads it with :meth:`_prep`.

    A handed-out tokenizer can be edited at any time, so the feature cache keys it by its
    state (:func:`sktransfer.cache.keys.prep_identity`), not by its name."""

    @property
    def preprocessing_(self):
        try:
            prep = self.__dict__["preprocessing_"]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute 'preprocessing_'"
            ) from None
        if not getattr(prep, "handed_out", False):
            prep = self.__dict__["preprocessing_"] = _private_preprocessing(prep)
        return prep

    @preprocessing_.setter
    def preprocessing_(self, prep):
        self.__dict__["preprocessing_"] = prep

    @preprocessing_.deleter
    def preprocessing_(self):
        try:
            del self.__dict__["preprocessing_"]
        except KeyError:
            raise AttributeError("preprocessing_") from None

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
