"""A dataset that fails part-way through an epoch: an in-process stand-in for a killed training run
(tests/test_resume.py, and tests/test_distributed.py's torchrun workers)."""
from __future__ import annotations

import torch


class Crash(Exception):
    pass


class CrashingDataset(torch.utils.data.Dataset):
    """Raises :class:`Crash` after ``budget`` items. Under torchrun every process reads the same number of items per
    step, so all of them stop at the same step."""

    def __init__(self, data, budget: int):
        self.data, self.budget = data, budget

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.budget -= 1
        if self.budget < 0:
            raise Crash
        return self.data[i]
