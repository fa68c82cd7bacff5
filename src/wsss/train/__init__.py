"""The one training loop. It knows nothing about any method.

It owns: the step count (epochs × batches per epoch), the sample order (a permutation seeded by
(seed, epoch)), the learning-rate schedule applied to every optimizer's param groups (poly,
`initial_lr` × (1 − step/max_steps)^power, by default; cosine and a linear warm-up on request),
the optimizers (SGD by default, AdamW) and gradient clipping (`Trainable`), checkpoints (method,
optimizers, step, RNG state) written atomically every `checkpoint_every` steps, a CSV log, and
resume: started again after a kill, it continues from the last checkpoint and ends with the
same weights as an uninterrupted run (on CPU, where kernels are deterministic). State a method
keeps besides its weights (an EMA teacher, a FIFO bank) rides in its state_dict (`EMA`, `FIFO`).

  trainable.py  Trainable (param groups, optimizers, optimize, begin), the lr schedules
  loop.py       fit, StepSampler, checkpoints, seeding, the device
  state.py      EMA teacher, FIFO bank, per-class row banks (ClassBanks)
  resume.py     the resume key: a checkpoint is resumed only by the same config, code, inputs
"""

from wsss.train.loop import (
    U_STREAM,
    StepSampler,
    fit,
    pick_device,
    save_checkpoint,
    seed_everything,
)
from wsss.train.state import EMA, FIFO, ClassBanks
from wsss.train.trainable import (
    TRAINING_DEFAULTS,
    Trainable,
    lr_factor,
    poly_lr,
    schedule_lr,
    set_lr,
)

__all__ = [
    "EMA", "FIFO", "ClassBanks", "TRAINING_DEFAULTS", "U_STREAM", "StepSampler", "Trainable", "fit",
    "lr_factor", "pick_device", "poly_lr", "save_checkpoint", "schedule_lr", "seed_everything",
    "set_lr",
]
