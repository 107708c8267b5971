"""Regularisers toward the source model: ``min L(f_t(x), y) + strength * R(f_t, f_s)``.

One searchable parameter picks one (``regularizer=``, built by :func:`make_regularizer`);
each is a skorch callback of the training loop:

* ``"l2sp"`` (:class:`L2SP`): the weights toward their pretrained values, as a gradient.
* ``"lwf"``, ``"delta"``, ``"bss"``: loss terms over the training batch's features
  (:class:`FeatureRegularizer`: the loop adds :meth:`FeatureRegularizer.loss_term` to the
  training loss), in :mod:`sktransfer.training.feature_regularizers`.

L2-SP: regularise fine-tuned weights toward the pretrained source.

Li, Grandvalet & Davoine (2018), "Explicit inductive bias for transfer learning
with convolutional networks": instead of weight decay toward 0, the penalty

    Omega(w) = alpha/2 * ||w_S - w_S^0||^2 + beta/2 * ||w_head||^2

pulls the backbone weights ``w_S`` back to their pretrained values ``w_S^0`` and
applies plain L2 to the new head's weights (not its bias, as in scikit-learn's
``LogisticRegression``). The penalty is added to the gradient after each backward
pass (its exact gradient, ``alpha (w - w0)`` and ``beta w``; a skorch callback on
``on_grad_computed``), which is the same
update as adding it to the loss but keeps the recorded training loss comparable
across settings and builds no autograd graph over every parameter.
"""

from __future__ import annotations

import torch
from skorch.callbacks import Callback

#: ``regularizer_strength=None`` takes these. LwF's is 0.1: at 1.0 it cost 1.3 and 1.2 points
#: against plain fine-tuning at 32 labels per class (Fashion-MNIST, Rotten Tomatoes; 3 draws,
#: ``benchmarks/bench_regularizers.py``), at 0.1 it was level on both.
DEFAULT_STRENGTH = {"l2sp": 0.01, "lwf": 0.1, "delta": 0.01, "bss": 0.001}

#: name -> class of the feature regularisers (registered below their definitions).
FEATURE_REGULARIZERS: dict = {}


class FeatureRegularizer(Callback):
    """A penalty computed from a training batch: the loop adds ``loss_term`` to the loss.

    Built at fit start on the :class:`~sktransfer.freezing.TransferNet` about to be
    trained, whose current weights are the source ``f_s``. ``loss_term(module, X)`` is
    called once per training batch after the forward pass (``X`` the batch's input as the
    module received it, before device placement), and returns a scalar tensor with a
    gradient toward the trainable weights.
    """

    replaces_weight_decay = False

    def loss_term(self, module, X) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class L2SP(Callback):
    """Penalty toward a snapshot of ``backbone`` parameters, plus L2 on ``head`` weights.

    A skorch callback: after each backward pass (``on_grad_computed``, where skorch's
    ``GradientNormClipping`` also works) it adds the penalty's gradient.

    Parameters
    ----------
    backbone : list of torch.nn.Parameter
        The trainable backbone parameters; their current values are the anchor.
    head : list of torch.nn.Parameter
        The head parameters penalised toward 0 (pass the weights, not the bias).
    alpha, beta : float
        Strengths of the two terms.
    """

    replaces_weight_decay = True  # the penalty's anchor replaces decay toward 0

    def __init__(self, backbone, head, alpha: float, beta: float):
        self.backbone = list(backbone)
        self.anchor = [p.detach().clone() for p in self.backbone]
        self.head = list(head)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def penalty(self) -> torch.Tensor:
        """The value of ``Omega`` (for monitoring; training uses :meth:`add_gradients`)."""
        with torch.no_grad():
            total = torch.zeros(())
            for p, p0 in zip(self.backbone, self.anchor):
                total = total + 0.5 * self.alpha * (p - p0).pow(2).sum().cpu()
            for p in self.head:
                total = total + 0.5 * self.beta * p.pow(2).sum().cpu()
        return total

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.add_gradients()

    @torch.no_grad()
    def add_gradients(self) -> None:
        """``p.grad += alpha (p - p0)`` on the backbone, ``+= beta p`` on the head."""
        for params, anchor, coef in (
            (self.backbone, self.anchor, self.alpha),
            (self.head, None, self.beta),
        ):
            live = [i for i, p in enumerate(params) if p.requires_grad]  # frozen: skipped
            if coef == 0 or not live:
                continue
            for i in live:
                if params[i].grad is None:
                    params[i].grad = torch.zeros_like(params[i])
            grads = [params[i].grad for i in live]
            values = [params[i] for i in live]
            if anchor is not None:
                values = torch._foreach_sub(values, [anchor[i] for i in live])
            torch._foreach_add_(grads, values, alpha=coef)


def make_regularizer(name, strength, net, *, l2sp_alpha=0.0, l2sp_beta=0.01):
    """The callback for ``regularizer=name`` on ``net`` (its weights now are the source).

    ``name=None`` with ``l2sp_alpha > 0`` is L2-SP at ``alpha=l2sp_alpha`` (the older
    spelling); ``name="l2sp"`` takes ``alpha=strength`` and ``beta=l2sp_beta``. Returns
    None when there is no regulariser.
    """
    if name is not None and l2sp_alpha > 0:
        raise ValueError(
            f"l2sp_alpha={l2sp_alpha} and regularizer={name!r} both ask for a regulariser: "
            "pass regularizer='l2sp' with regularizer_strength, or l2sp_alpha alone"
        )
    if name is None and l2sp_alpha > 0:
        name, strength = "l2sp", l2sp_alpha
    if name is None:
        return None
    strength = DEFAULT_STRENGTH[name] if strength is None else float(strength)
    if name == "l2sp":
        params = (p for m in (*net.blocks, net.pool) for p in m.parameters())
        backbone = [p for p in params if p.requires_grad]  # the final trainable set
        return L2SP(backbone, [net.head.weight], strength, l2sp_beta)
    import sktransfer.training.feature_regularizers  # noqa: F401  (fills FEATURE_REGULARIZERS)

    if name not in FEATURE_REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; known: {sorted(DEFAULT_STRENGTH)}")
    return FEATURE_REGULARIZERS[name](net, strength)
