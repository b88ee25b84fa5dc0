"""frpt.evaluation.loader: the decoding thread that feeds the engine keeps dataset order, hands its errors to the
caller and never outlives the loop that reads it."""
from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from frpt.evaluation import PREFETCH_BATCHES, loader


class _Numbers(Dataset):
    """Item i is (a tensor filled with i, i); item ``bad`` raises, as an undecodable image does."""

    def __init__(self, n: int, bad: int | None = None):
        self.n, self.bad, self.reads = n, bad, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads += 1
        if i == self.bad:
            raise OSError(f"image {i} is truncated")
        return torch.full((3, 4, 4), float(i)), i


def _decoders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "frpt-decode"]


def test_the_decoding_thread_yields_what_the_plain_loop_does_in_order():
    data = _Numbers(23)
    got = list(loader(data, batch_size=5))
    want = list(DataLoader(data, batch_size=5))
    assert len(got) == len(want) == len(loader(data, batch_size=5)) == 5
    for (x, y), (x0, y0) in zip(got, want):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not _decoders()


def test_an_error_while_decoding_is_raised_in_the_loop_and_the_thread_ends():
    seen = []
    with pytest.raises(OSError, match="image 12 is truncated"):
        for _, y in loader(_Numbers(30, bad=12), batch_size=4):
            seen.extend(y.tolist())
    assert seen == list(range(12))  # every batch before the bad one arrived, in order
    assert not _decoders()


def test_a_loop_that_stops_early_stops_the_thread_after_a_bounded_read_ahead():
    data = _Numbers(400)
    batches = iter(loader(data, batch_size=2))
    next(batches)
    batches.close()  # what a `break` or an exception in the loop body does to the generator
    assert not _decoders()
    assert data.reads <= 2 * (PREFETCH_BATCHES + 3)  # read ahead a few batches, not the whole split


def test_explicit_workers_are_processes_as_asked():
    assert isinstance(loader(_Numbers(4), batch_size=2, workers=0), DataLoader)
    assert loader(_Numbers(4), batch_size=2, workers=2).num_workers == 2
