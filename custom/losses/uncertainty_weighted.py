"""Task-adaptive loss balancing of TAT (MICCAI 2025): a per-sample, uncertainty-weighted L1 loss."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UncertaintyEstimator", "TaskAdaptiveBalancedLoss", "PlainL1Loss", "per_sample_l1"]


def per_sample_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per sample.

    Args:
        a: tensor of shape (B, ...).
        b: tensor broadcastable to ``a``.

    Returns:
        Tensor of shape (B,).
    """
    return (a - b).abs().flatten(1).mean(dim=1)


class UncertaintyEstimator(nn.Module):
    """Small MLP mapping per-sample loss statistics to an uncertainty ``s_b``.

    ``linear in -> hidden``; a residual block ``x + linear(GELU(linear(LayerNorm(x))))`` with ``hidden ->
    mlp_dim -> hidden``; ``linear hidden -> 1``. The last layer starts with weight 0 and bias 1, so every
    sample starts with ``s_b = 1`` (and the loss with weights 0.5 on the restoration L1).

    Args:
        in_features: number of loss statistics per sample. Defaults to 3 (``l_in, l_change, l_rest``).
        hidden: width of the residual stream. Defaults to 16.
        mlp_dim: width inside the residual block. Defaults to 256.
    """

    def __init__(self, in_features: int = 3, hidden: int = 16, mlp_dim: int = 256) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden), ("mlp_dim", mlp_dim)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        self.embed = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, hidden)
        self.head = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Head weight 0 and bias 1 so that the initial uncertainty is exactly 1 for every input."""
        nn.init.zeros_(self.head.weight)
        nn.init.ones_(self.head.bias)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        """Args:
            stats: (B, in_features) loss statistics.

        Returns:
            (B,) uncertainties ``s_b`` (may be negative; only ``s_b**2`` enters the loss).
        """
        x = self.embed(stats)  # (B, hidden)
        x = x + self.fc2(self.act(self.fc1(self.norm(x))))  # (B, hidden)
        return self.head(x).squeeze(-1)  # (B,)


class TaskAdaptiveBalancedLoss(nn.Module):
    """Task-adaptive loss balancing from TAT (Task-Adaptive Transformer for All-in-One Medical Image
    Restoration, MICCAI 2025).

    For each sample ``b`` with input ``x``, prediction ``y_hat`` and target ``y`` (L1 = mean absolute
    difference over the sample's pixels)::

        l_in = L1(x, y),  l_change = L1(x, y_hat),  l_rest = L1(y_hat, y)
        s_b  = estimator(detach([l_in, l_change, l_rest]))
        loss = mean_b( 0.5 * l_rest_b / (s_b**2 + eps) + 0.5 * log(1 + s_b**2) )

    The estimator's input is detached, so it is trained only through the loss formula (its parameters
    must be given to the optimiser together with the network's), and the network receives the gradient of
    ``l_rest`` scaled by the per-sample weight ``0.5 / (s_b**2 + eps)``. No task label is needed: hard
    samples and hard tasks get their own weights. Fully vectorised over the batch.

    Args:
        hidden: estimator residual-stream width. Defaults to 16.
        mlp_dim: estimator inner width. Defaults to 256.
        eps: added to ``s_b**2`` in the denominator. Defaults to 1e-8.
        return_details: if True, ``forward`` returns ``(loss, details)`` where ``details`` holds per-sample
            ``"weight"`` (``0.5 / (s**2 + eps)``), ``"sigma"`` (``s``) and ``"l_rest"``, all detached, shape (B,).
            Defaults to False (returns the scalar loss only).
    """

    def __init__(self, hidden: int = 16, mlp_dim: int = 256, eps: float = 1e-8, return_details: bool = False) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}.")
        self.estimator = UncertaintyEstimator(in_features=3, hidden=hidden, mlp_dim=mlp_dim)
        self.eps = eps
        self.return_details = return_details

    def forward(
        self, inputs: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args:
            inputs: degraded images ``x``, (B, C, *spatial).
            preds: network outputs ``y_hat``, same shape.
            targets: reference images ``y``, same shape.

        Returns:
            The scalar loss, or ``(loss, details)`` when ``return_details`` is True.

        Raises:
            ValueError: when the three tensors do not share one shape or have no batch dimension.
        """
        if not (inputs.shape == preds.shape == targets.shape) or inputs.ndim < 2:
            raise ValueError(
                "inputs, preds and targets must share one (B, C, *spatial) shape, got "
                f"{tuple(inputs.shape)}, {tuple(preds.shape)}, {tuple(targets.shape)}."
            )
        l_rest = per_sample_l1(preds, targets)  # (B,)
        with torch.no_grad():
            l_in = per_sample_l1(inputs, targets)
            l_change = per_sample_l1(inputs, preds)
        stats = torch.stack([l_in, l_change, l_rest.detach()], dim=1).float()  # (B, 3), no graph to the network
        sigma = self.estimator(stats)  # (B,)
        var = sigma**2
        per_sample = 0.5 * l_rest / (var + self.eps) + 0.5 * torch.log1p(var)  # (B,)
        loss = per_sample.mean()
        if not self.return_details:
            return loss
        details = {"weight": (0.5 / (var + self.eps)).detach(), "sigma": sigma.detach(), "l_rest": l_rest.detach()}
        return loss, details


class PlainL1Loss(nn.Module):
    """Plain L1 loss with the call signature of :class:`TaskAdaptiveBalancedLoss` (the "loss balancing off"
    ablation). Reports a constant per-sample weight of 1 when ``return_details`` is True.

    Args:
        return_details: if True, ``forward`` returns ``(loss, details)`` like the balanced loss.
    """

    def __init__(self, return_details: bool = False) -> None:
        super().__init__()
        self.return_details = return_details

    def forward(
        self, inputs: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args:
            inputs: degraded images (B, C, *spatial); unused, kept for the shared signature.
            preds: network outputs, same shape.
            targets: reference images, same shape.

        Returns:
            The scalar mean absolute error, or ``(loss, details)`` when ``return_details`` is True.

        Raises:
            ValueError: when ``preds`` and ``targets`` differ in shape.
        """
        if preds.shape != targets.shape or preds.ndim < 2:
            raise ValueError(f"preds and targets must share one (B, ...) shape, got {preds.shape}, {targets.shape}.")
        l_rest = per_sample_l1(preds, targets)
        loss = l_rest.mean()
        if not self.return_details:
            return loss
        ones = torch.ones_like(l_rest)
        return loss, {"weight": ones, "sigma": ones, "l_rest": l_rest.detach()}
