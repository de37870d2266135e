"""Supervised contrastive loss on TAT's task embedding: an optional training signal that separates the tasks.

The published network learns its task representation only through the restoration loss (the generated kernels);
the paper shows the embeddings of the fully trained model clustering by task, but a short or small training run
need not separate them, and the bundle's task check (:mod:`custom.inference.task_check`) names each scan's task
from exactly these embeddings. This loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, the
``L_out`` form) pulls the embeddings of one task together and pushes other tasks' away, on the unit sphere, with
the task labels the training data already carry (one data loader per task). It has no parameters, so checkpoints
keep the published layout. MONAI's ``ContrastiveLoss`` is the self-supervised SimCLR form (one positive pair per
sample, two views), not the supervised one with any number of same-class positives in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SupervisedContrastiveLoss", "task_labels"]


def task_labels(tasks: Sequence[str] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Integer labels ``(B,)`` of a batch's task entries (equal names, equal labels; upper case, so ``"ct"`` and
    ``"CT"`` are one task).

    Args:
        tasks: ``B`` task or modality names (a collated batch's ``"modality"`` list), or integer labels.
        device: where the labels go.

    Raises:
        ValueError: an empty batch.
    """
    if isinstance(tasks, torch.Tensor):
        labels = tasks.to(device=device, dtype=torch.long).flatten()
    else:
        names = [str(t).upper() for t in tasks]
        order = {name: i for i, name in enumerate(sorted(set(names)))}
        labels = torch.tensor([order[n] for n in names], dtype=torch.long, device=device)
    if labels.numel() == 0:
        raise ValueError("task labels of an empty batch.")
    return labels


class SupervisedContrastiveLoss(nn.Module):
    """Supervised contrastive loss (``L_out``) of a batch of embeddings with task labels.

    With ``u_i = z_i / |z_i|`` and ``s_ij = u_i . u_j / temperature``, for every anchor ``i`` that has at least one
    other sample of its task (its positives ``P(i)``)::

        l_i = - mean_{p in P(i)} ( s_ip - log sum_{a != i} exp(s_ia) )

    and the loss is the mean of ``l_i`` over those anchors (0 when no anchor has a positive, e.g. one sample per
    task). It is smallest when each task's embeddings point one way and the tasks point apart.

    Args:
        temperature: softmax temperature (> 0); 0.1 as in the paper's supervised setting.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, labels: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Args:
            embeddings: ``(B, D)``.
            labels: ``B`` task names or integer labels (:func:`task_labels`).

        Returns:
            scalar loss.

        Raises:
            ValueError: ``embeddings`` is not ``(B, D)`` or the number of labels is not ``B``.
        """
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}.")
        y = task_labels(labels, embeddings.device)
        if y.numel() != embeddings.shape[0]:
            raise ValueError(f"{y.numel()} task labels for {embeddings.shape[0]} embeddings.")
        with torch.autocast(embeddings.device.type, enabled=False):  # float32 even inside the trainer's AMP
            u = F.normalize(embeddings.float(), dim=1)
            sim = u @ u.T / self.temperature  # (B, B)
            eye = torch.eye(len(y), dtype=torch.bool, device=u.device)
            log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
            positive = (y[:, None] == y[None, :]) & ~eye
            count = positive.sum(1)
            anchors = count > 0
            if not bool(anchors.any()):
                return sim.sum() * 0.0  # keeps the graph: a zero gradient, not a missing one
            per_anchor = -(log_prob * positive).sum(1)[anchors] / count[anchors]
            return per_anchor.mean()
