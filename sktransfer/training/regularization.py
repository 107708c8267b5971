"""L2-SP: regularise fine-tuned weights toward the pretrained source.

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
