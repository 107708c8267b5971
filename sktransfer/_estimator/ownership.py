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


def read_network(est):
    """``est``'s fitted network without handing it out: no private copy, no digest reset.
    For library code that reads it and never changes it (saving, exporting)."""
    return est.__dict__["module_"]
