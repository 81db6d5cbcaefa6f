"""The output layer of the textbook RNN: ``y_t = g(W_hy h_t + b_y)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ACTIVATIONS = ("softmax", "identity")


class OutputLayer(nn.Module):
    """``y_t = g(W_hy h_t + b_y)`` with ``g`` softmax (class probabilities) or identity.

    Arguments: ``hidden_size``, ``output_size``, ``activation="softmax"|"identity"``,
    ``bias=True``. Input ``h (..., H)``; output ``(..., output_size)``. ``W_hy`` is
    ``weight (output_size, H)``, ``b_y`` is ``bias``.

    For training with softmax, use :meth:`logits` with ``F.cross_entropy`` or :meth:`log_prob`
    (both numerically stable) rather than the log of :meth:`forward`.
    """

    def __init__(self, hidden_size: int, output_size: int, activation: str = "softmax", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'softmax' or 'identity', got {activation!r}")
        self.activation = activation
        self.linear = nn.Linear(hidden_size, output_size, bias=bias)

    def logits(self, h: Tensor) -> Tensor:
        """``W_hy h + b_y``, before ``g``."""
        return self.linear(h)

    def log_prob(self, h: Tensor) -> Tensor:
        """``log softmax(W_hy h + b_y)``; softmax heads only."""
        if self.activation != "softmax":
            raise ValueError("log_prob needs activation='softmax'")
        return F.log_softmax(self.logits(h), dim=-1)

    def forward(self, h: Tensor) -> Tensor:
        a = self.logits(h)
        return torch.softmax(a, dim=-1) if self.activation == "softmax" else a
