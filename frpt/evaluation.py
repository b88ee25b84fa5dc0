"""Embedding extraction and the zero-shot retrieval evaluation."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .metrics import retrieval_metrics
from .models import FRPT

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere PyTorch emulates bf16 on the CPU
    and autocast is several times *slower* than fp32, so it must be detected, never assumed."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """"auto" -> bf16 on CUDA or on a CPU with native bf16, else fp32; explicit choices pass through."""
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" or native_bf16() else "fp32"


@dataclass
class Embeddings:
    """Per-image embeddings of a dataset split: before the head (pooled backbone features of the warped image)
    and after it (the retrieval embedding), with labels, in dataset order."""

    before: np.ndarray
    after: np.ndarray
    labels: np.ndarray


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing. Worth it on GPUs and on CPUs with native bf16 (avx512_bf16/AMX); on a CPU
    without it bf16 is emulated and slower than fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_embeddings(model: FRPT, dataset: Dataset, *, batch_size: int = 64, device: str | torch.device = "cpu",
                       precision: str = "fp32", workers: int = 0, progress: bool = True,
                       desc: str = "embedding") -> Embeddings:
    """Run ``model`` over ``dataset`` (items ``(image, label, index)``) in eval mode, channels-last."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device=device, memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    before, after, labels = [], [], []
    try:
        for images, targets, _ in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                out = model(images)
            before.append(out.pre_head.float().cpu())
            after.append(out.embedding.float().cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        model.to(memory_format=torch.contiguous_format).train(was_training)
    return Embeddings(torch.cat(before).numpy(), torch.cat(after).numpy(), torch.cat(labels).numpy())


def evaluate(model: FRPT, dataset: Dataset, **kwargs) -> dict[str, float]:
    """Leave-one-out cosine retrieval on ``dataset`` (the test split): recall@1/2/4/8, map@r, nmi, queries."""
    emb = extract_embeddings(model, dataset, **kwargs)
    return retrieval_metrics(emb.after, emb.labels)
