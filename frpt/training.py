"""Training: only the DPP, CAH and embedding head learn (all of the backbone for ``finetune``).

Every epoch ends with an atomic checkpoint (see :mod:`frpt.checkpoint`) and an atomically rewritten
``log.csv``. Randomness is re-seeded from (seed, epoch) at the start of each epoch, so a run resumed with
``--resume`` after being killed continues exactly as an uninterrupted run with the same seed would.

Under ``torchrun`` (see :mod:`frpt.distributed`) the model is wrapped in DistributedDataParallel: ``batch_size`` is
the global batch, each of the N processes takes its B/N slice of the very batches one process would draw, gradients
are averaged and BatchNorm layers use global-batch statistics, so N processes train like one. Only rank 0 writes.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import random
import time
import sys
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CARD, check_tensors, load_card, load_train_state, read_tensors, save_checkpoint, verified_file
from .config import TrainConfig
from .errors import CheckpointError
from .data.base import RetrievalDataset
from .evaluation import Embeddings, extract_embeddings, score_embeddings
from .fileio import atomic_write_text
from .losses import cross_entropy
from .metrics import retrieval_metrics
from .models import FRPT

LOG = "log.csv"
# Training's test evaluation runs in fp32 (its figures are the card's metrics), on the inference engine the run
# names (frpt.engine); the card and the stored gallery record both.
TEST_PRECISION = "fp32"
LOG_FIELDS = ("epoch", "train_loss", "lr", "recall@1", "seconds")


def lr_at(cfg: TrainConfig, epoch: int, iteration: int, iters_per_epoch: int) -> float:
    """Learning rate for global ``iteration`` in ``epoch`` (both from 0).

    step (paper): lr x gamma every ``step_epochs`` epochs. cosine (released code): linear warm-up from
    ``warmup_factor`` x lr over ``warmup_iters`` iterations, then per-epoch cosine annealing to ``min_lr``.
    """
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (epoch // cfg.step_epochs)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        return cfg.lr * (cfg.warmup_factor * (1 - alpha) + alpha)
    warmup_epochs = math.ceil(cfg.warmup_iters / max(1, iters_per_epoch))
    span = max(1, cfg.epochs - warmup_epochs)
    t = min(1.0, max(0, epoch - warmup_epochs) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(model: FRPT, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW, ``cfg.optimizer``) over the learned parameters; groups carry ``lr_scale`` (the DPP's
    ``prompt_lr_scale``) and their weight decay (none on biases when ``bias_weight_decay`` is off, as in the
    released code)."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (not cfg.bias_weight_decay and name.endswith("bias")) else cfg.weight_decay
        scale = cfg.prompt_lr_scale if name.startswith("prompt.") else 1.0
        groups.setdefault((scale, decay), []).append(p)
    param_groups = [{"params": ps, "lr_scale": scale, "weight_decay": decay, "lr": cfg.lr * scale}
                    for (scale, decay), ps in groups.items()]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr)
    if cfg.optimizer != "sgd":
        raise CheckpointError(f"Unknown optimizer {cfg.optimizer!r}; use sgd or adamw.")
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)


def _optimizer_tensors(model: FRPT, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum.{names[id(p)]}"] = buf
    return out


def _restore_optimizer(model: FRPT, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        name = key.removeprefix("momentum.")
        if name not in params:
            raise CheckpointError(f"Training state names an unknown parameter {name!r}; start a fresh run.")
        p = params[name]
        if value.shape != p.shape or value.dtype != p.dtype or not torch.isfinite(value).all():
            raise CheckpointError(f"Training state for {name!r} does not fit the model (shape, dtype or non-finite "
                                  "values); the file was damaged, start a fresh run.")
    for key, value in tensors.items():  # all checked first: a bad entry never leaves a half-restored optimiser
        optimizer.state[params[key.removeprefix("momentum.")]]["momentum_buffer"] = value.clone()


def read_log(out_dir: str | Path) -> list[dict[str, str]]:
    path = Path(out_dir) / LOG
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _log_rows_upto(out_dir: Path, epoch: int) -> list[dict[str, Any]]:
    """Log rows of epochs 1..``epoch`` (rows written after the card's epoch, or garbled ones, are dropped)."""
    try:
        rows = read_log(out_dir)
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    kept = {}
    for r in rows:
        e = str(r.get("epoch") or "")
        if e.isdigit() and 1 <= int(e) <= epoch:
            kept[int(e)] = {k: r.get(k, "") for k in LOG_FIELDS}
    return [kept[e] for e in sorted(kept)]


def _write_log(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / LOG, buf.getvalue())


def _epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    return cfg.seed * 1_000_003 + epoch


def _rank_seed(seed: int, rank: int) -> int:
    """Augmentation seed of process ``rank``: rank 0 (and a single process) keeps ``seed``, others get their own
    stream, so two processes never draw the same crops for their different images."""
    return seed + (rank << 32)


def _offset_worker_seed(worker_id: int, rank: int) -> None:
    seed = _rank_seed(torch.initial_seed(), rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)


def epoch_loader(train_set: Dataset, cfg: TrainConfig, epoch: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The shuffled batches of ``epoch``, drawn from a generator seeded by (seed, epoch) (the ``set_epoch`` of a
    DistributedSampler), so a resumed run draws what an uninterrupted one would. With ``world_size`` processes,
    each gets its slice of the same global batches (:class:`frpt.distributed.ShardedBatchSampler`)."""
    generator = torch.Generator().manual_seed(_epoch_seed(cfg, epoch))
    if world_size == 1:
        return DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                          num_workers=cfg.workers, generator=generator)
    batches = BatchSampler(RandomSampler(train_set, generator=generator), cfg.batch_size, drop_last=True)
    return DataLoader(train_set, batch_sampler=distributed.ShardedBatchSampler(batches, rank, world_size),
                      num_workers=cfg.workers, generator=generator,
                      worker_init_fn=partial(_offset_worker_seed, rank=rank) if cfg.workers else None)


def train(model: FRPT, train_set: Dataset, cfg: TrainConfig, out_dir: str | Path, *, classes: list[str],
          dataset_info: dict[str, Any], test_set: Dataset | None = None, resume: bool = False,
          device: str | torch.device = "cpu", progress: bool = True, eval_batch_size: int = 64,
          limit_batches: int | None = None, engine: str | None = None,
          grad_checkpointing: bool = False) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` epochs, checkpointing into ``out_dir`` after each; returns the card.
    The test passes run without gradients on ``engine`` (:mod:`frpt.engine`); training itself runs in torch.
    ``grad_checkpointing`` recomputes the backbone's activations in the backward pass (the same gradients, about
    half the memory, a slower step): a memory setting recorded in the card, not part of the recipe.

    Under a process group (torchrun), every process calls this with the same arguments; see the module doc."""
    out_dir = Path(out_dir)
    device = torch.device(device)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    progress = progress and main
    cfg = fit_batch(cfg, len(train_set), world, say=main)
    # Card fields: how this run's epochs were computed (the train config's batch_size is the global batch).
    parallel = {"world_size": world, "global_batch_size": cfg.batch_size, "grad_checkpointing": grad_checkpointing}
    test_pass = partial(_test_pass, model, test_set, eval_batch_size, device, cfg.workers or None, engine=engine)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    start_epoch, rows = 0, []
    if resume and (out_dir / CARD).is_file():
        card = load_card(out_dir)
        if card["model"] != asdict(model.config) or card.get("train") != asdict(cfg):
            raise CheckpointError(f"{out_dir} holds a run with another model or training config; "
                                  "resume with the same options, or choose a new --out folder.")
        tensors = read_tensors(verified_file(out_dir, card, "weights"))
        check_tensors(model, tensors, out_dir, with_backbone=any(k.startswith("backbone.") for k in tensors)
                      and not model.config.finetune)
        model.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=False)
        _restore_optimizer(model, optimizer, {k: v.to(device) for k, v in (load_train_state(card) or {}).items()})
        start_epoch = card.get("epoch")
        if not isinstance(start_epoch, int) or isinstance(start_epoch, bool) or not 0 <= start_epoch <= cfg.epochs:
            raise CheckpointError(f"{out_dir / CARD} records epoch {start_epoch!r}, not a completed epoch of this "
                                  f"{cfg.epochs}-epoch run; it was edited, choose a new --out folder.")
        rows = _log_rows_upto(out_dir, start_epoch)
    elif (out_dir / CARD).is_file():
        raise CheckpointError(f"{out_dir} already holds a checkpoint; pass --resume to continue it or choose a new --out.")
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    iters_per_epoch = len(train_set) // cfg.batch_size if limit_batches is None else limit_batches
    if iters_per_epoch == 0:
        raise CheckpointError(f"The training split has {len(train_set)} images, fewer than one batch of "
                              f"{cfg.batch_size}; lower --batch-size.")
    if not model.config.trainable or start_epoch >= cfg.epochs:
        metrics, test_emb = test_pass(progress=progress)
        if main:
            save_checkpoint(out_dir, model, classes=classes, dataset=dataset_info, train=cfg, epoch=start_epoch,
                            metrics=metrics, train_state=_optimizer_tensors(model, optimizer),
                            extra={**parallel, **inference_record(test_emb)})
            store_test_gallery(out_dir, test_set, dataset_info, test_emb)
        return distributed.broadcast_object(load_card(out_dir) if main else None)
    net: torch.nn.Module = model
    if world > 1:
        distributed.sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      forward_sync_buffers=False)  # BatchNorm buffers agree: global statistics
    with model.backbone.grad_checkpointing(grad_checkpointing):
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            torch.manual_seed(_rank_seed(_epoch_seed(cfg, epoch), rank))
            loader = epoch_loader(train_set, cfg, epoch, rank, world)
            # Gradients flow through the backbone here (the DPP), so this is torch, not an inference engine. Contiguous:
            # channels-last was 1.16x / 1.28x faster a step (bench_speed.py --only train_memory_format) but its kernels
            # round batches of 4 and 8 differently enough that one process and two no longer train alike (1e-3 in the
            # loss; tests/test_distributed.py), so it is not used here.
            model.train()
            total, seen, lr = 0.0, 0, cfg.lr
            bar = tqdm(itertools.islice(loader, iters_per_epoch), total=iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                       unit="batch")
            for step, (images, targets, _) in enumerate(bar):
                lr = lr_at(cfg, epoch, epoch * iters_per_epoch + step, iters_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                images, targets = images.to(device), targets.to(device)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(images).logits
                loss = cross_entropy(logits, targets, cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:  # released code: each parameter's gradient clipped to L2 norm <= 5 separately
                    scaler.unscale_(optimizer)
                    for p in model.parameters():
                        if p.grad is not None:
                            torch.nn.utils.clip_grad_norm_([p], cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                total += loss.item() * len(targets)
                seen += len(targets)
                bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{lr:.2e}")
            total, seen = distributed.all_reduce_sum(torch.tensor([total, seen], dtype=torch.float64)).tolist()
            done = epoch + 1
            metrics: dict[str, Any] = {}
            test_emb = None
            last = done == cfg.epochs
            if last or (cfg.eval_every and done % cfg.eval_every == 0):
                metrics, test_emb = test_pass(progress=False)
            rows.append({"epoch": done, "train_loss": round(total / max(seen, 1), 6), "lr": lr,
                         "recall@1": metrics.get("recall@1", ""), "seconds": round(time.perf_counter() - started, 3)})
            if main:
                _write_log(out_dir, rows)  # before the card: a resume drops log rows past the card's epoch
                save_checkpoint(out_dir, model, classes=classes, dataset=dataset_info, train=cfg, epoch=done,
                                metrics=metrics, train_state=_optimizer_tensors(model, optimizer),
                                extra={**parallel, **inference_record(test_emb)})
                if last:
                    store_test_gallery(out_dir, test_set, dataset_info, test_emb)
    return distributed.broadcast_object(load_card(out_dir) if main else None)  # rank 0's card, on every process


def fit_batch(cfg: TrainConfig, images: int, world: int = 1, say: bool = True) -> TrainConfig:
    """``cfg`` with its batch shrunk to what a training split of ``images`` holds (a multiple of the ``world``
    processes), said in one line: the released code's batch of 256 is larger than a small split such as the
    built-in synthetic one. The card records the batch that ran."""
    fitted = images // world * world
    if cfg.batch_size <= images or fitted < 2:
        return cfg  # fits, or a split too small for any batch (train() says so)
    if say:
        print(f"note: the training split has {images} images, fewer than one batch of {cfg.batch_size}; training "
              f"with batches of {fitted}.", file=sys.stderr)
    return replace(cfg, batch_size=fitted)


def inference_record(emb: Embeddings | None) -> dict[str, Any]:
    """Card field: how the test figures were computed (engine and precision of the frozen backbone's passes)."""
    return {"inference": emb.plan.as_dict()} if emb is not None and emb.plan is not None else {}


def _test_pass(model: FRPT, test_set: Dataset | None, batch_size: int, device: torch.device, workers: int,
               progress: bool, engine: str | None = None) -> tuple[dict[str, Any], Embeddings | None]:
    """Test-split figures and the embeddings they came from (none without a test split)."""
    if test_set is None:
        return {}, None
    emb = extract_embeddings(model, test_set, batch_size=batch_size, device=device, precision=TEST_PRECISION,
                             engine=engine, workers=workers, progress=progress)
    return score_embeddings(emb), emb


def store_test_gallery(out_dir: Path, test_set: Dataset | None, dataset_info: dict[str, Any],
                       embeddings: Embeddings | None) -> None:
    """The final test embeddings become the saved checkpoint's gallery (:func:`frpt.gallery.store_gallery`), so
    the app opens a checkpoint trained here without embedding the test split again. Rank 0 only."""
    if embeddings is None or not isinstance(test_set, RetrievalDataset):
        return
    from .gallery import store_gallery

    store_gallery(load_card(out_dir), test_set, dataset_info.get("root"), embeddings)


__all__ = ["train", "epoch_loader", "lr_at", "build_optimizer", "read_log", "retrieval_metrics", "LOG"]
