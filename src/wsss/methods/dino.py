"""DINO's self-distillation loss with centring (Caron et al. 2021), as FSR applies it to class
and masked patch tokens (FSR's `FSRLoss`), and its teacher-temperature warm-up.

For student outputs s and teacher outputs t (rows of `dim` logits), the loss is the mean over
rows of the cross-entropy H(softmax((t - c) / τ_t), softmax(s / τ_s)); the teacher side carries
no gradient. The centre c, a running mean of the teacher's outputs, is a buffer (so it is in
the checkpoint), updated after each loss with momentum m: c ← m c + (1 - m) mean(t). FSR keeps
two, one for the class token and one for the patch tokens, i.e. two `DINOLoss` modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from `start` at step 0 to `end` at `warmup_steps`, then `end` (FSR: 0.04 -> 0.07
    over the first eighth of training)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


class DINOLoss(nn.Module):
    def __init__(self, dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float,
                center_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of (N, dim) `student` rows against the centred, sharpened
        `teacher` rows; updates the centre afterwards with this batch's teacher rows, or with
        `center_rows` (FSR's patch centre follows every teacher patch of the view, while the
        loss reads the masked ones only). No rows: 0 (and the centre still moves)."""
        teacher = teacher.detach().float()
        target = F.softmax((teacher - self.center) / teacher_temp, dim=-1)
        loss = -(target * F.log_softmax(student.float() / self.student_temp, dim=-1)).sum(-1)
        self.update_center(teacher if center_rows is None else center_rows.detach().float())
        return loss.mean() if len(loss) else loss.sum()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        if len(teacher) == 0:
            return
        m = self.center_momentum
        self.center.mul_(m).add_(teacher.mean(dim=0, keepdim=True), alpha=1.0 - m)
