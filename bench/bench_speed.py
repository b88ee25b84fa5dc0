"""Speed of FRPT relative to its baselines, as ratios measured in one process (one JSON line per measurement).

1. train_step: FRPT training step / full fine-tuning step (same backbone, batch 16, 224 px, SGD as in
   frpt.training), timed steps interleaved so that load from other processes hits both alike.
2. embed: FRPT forward (DPP saliency pass + warp + backbone on the warped image + CAH) / backbone-only forward
   (the PT model), fp32 and bf16 autocast, channels_last, eval mode, interleaved.
3. train_memory_format: an FRPT training step (gradients flow through the frozen backbone to the DPP, so it runs in
   torch, not on an inference engine) in the contiguous layout against channels-last, interleaved.
4. train_grad_checkpointing: the peak memory (and seconds a step) of an FRPT training step with and without
   ``--grad-checkpointing``, each setting in a fresh process so that its peak resident memory is its own.
5. retrieval: top-10 for 16 queries over 10k / 100k / 1M random unit vectors of the backbone's width:
   frpt.index.RetrievalIndex numpy path vs faiss IndexFlatIP vs plain numpy matmul + argpartition; ms/query.

Inputs are random tensors, so no data loading is timed. Example:
  python bench/bench_speed.py --threads 2 > runs/speed.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frpt.config import model_config, train_config  # noqa: E402
from frpt.engine import autocast  # noqa: E402
from frpt.index import RetrievalIndex  # noqa: E402
from frpt.losses import cross_entropy  # noqa: E402
from frpt.models import build_model  # noqa: E402
from frpt.training import build_optimizer  # noqa: E402


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 3)


def _interleaved_steps(models: dict, inputs: dict, cfg, batch: int, size: int, warm: int, steps: int
                       ) -> dict[str, list[float]]:
    """Seconds of each timed training step per model (``inputs[k]`` lays out the shared batch for model k),
    the models' steps interleaved so that load from other processes hits all alike."""
    opts = {k: build_optimizer(m, cfg) for k, m in models.items()}
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 100, (batch,))
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warm + steps):
        for k, m in models.items():
            t = time.perf_counter()
            loss = cross_entropy(m(inputs[k](x)).logits, y, cfg.label_smoothing)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            if i >= warm:
                times[k].append(time.perf_counter() - t)
    return times


def bench_train(backbone: str, preset: str, batch: int, size: int, warm: int, steps: int) -> None:
    torch.manual_seed(0)
    cfg = train_config(preset)
    models = {v: build_model(model_config(preset, v, backbone=backbone, num_classes=100, input_size=size)).train()
              for v in ("frpt", "finetune")}
    times = _interleaved_steps(models, {v: (lambda x: x) for v in models}, cfg, batch, size, warm, steps)
    f, ft = statistics.median(times["frpt"]), statistics.median(times["finetune"])
    emit(bench="train_step", preset=preset, backbone=backbone, batch=batch, input_size=size, steps=steps,
         frpt_ms=median_ms(times["frpt"]), finetune_ms=median_ms(times["finetune"]), ratio_frpt_over_finetune=round(f / ft, 3),
         frpt_img_s=round(batch / f, 2), finetune_img_s=round(batch / ft, 2))


def bench_train_memory_format(backbone: str, preset: str, batch: int, size: int, warm: int, steps: int) -> None:
    torch.manual_seed(0)
    cfg = train_config(preset)
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    models = {k: build_model(model_config(preset, "frpt", backbone=backbone, num_classes=100, input_size=size))
              .to(memory_format=f).train() for k, f in layouts.items()}
    inputs = {k: (lambda x, f=f: x.contiguous(memory_format=f)) for k, f in layouts.items()}
    times = _interleaved_steps(models, inputs, cfg, batch, size, warm, steps)
    c, cl = statistics.median(times["contiguous"]), statistics.median(times["channels_last"])
    emit(bench="train_memory_format", preset=preset, backbone=backbone, batch=batch, input_size=size, steps=steps,
         contiguous_ms=median_ms(times["contiguous"]), channels_last_ms=median_ms(times["channels_last"]),
         speedup_channels_last=round(c / cl, 3))


def _checkpointing_steps(backbone: str, preset: str, batch: int, size: int, steps: int, checkpointing: bool,
                         threads: int) -> dict:
    """In a fresh process: ``steps`` FRPT training steps; peak resident memory above the built model's."""
    import resource

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = train_config(preset)
    model = build_model(model_config(preset, "frpt", backbone=backbone, num_classes=100, input_size=size)).train()
    opt = build_optimizer(model, cfg)
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 100, (batch,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with model.backbone.grad_checkpointing(checkpointing):
        for _ in range(steps):
            t = time.perf_counter()
            loss = cross_entropy(model(x).logits, y, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_s": round(statistics.median(times), 2), "model_mb": round(before / 1024),
            "peak_above_model_mb": round((peak - before) / 1024), }


def bench_train_grad_checkpointing(backbone: str, preset: str, batch: int, size: int, steps: int,
                                   threads: int) -> None:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        got = {c: pool.apply(_checkpointing_steps, (backbone, preset, batch, size, steps, c, threads))
               for c in (False, True)}
    emit(bench="train_grad_checkpointing", preset=preset, backbone=backbone, batch=batch, input_size=size,
         steps=steps, without=got[False], with_checkpointing=got[True],
         memory_ratio=round(got[False]["peak_above_model_mb"] / max(got[True]["peak_above_model_mb"], 1), 2),
         time_ratio=round(got[True]["step_s"] / got[False]["step_s"], 2))


@torch.no_grad()
def bench_embed(backbone: str, preset: str, batch: int, size: int, warm: int, iters: int,
                precisions: tuple[str, ...] = ("fp32", "bf16")) -> None:
    torch.manual_seed(0)
    models = {"frpt": build_model(model_config(preset, "frpt", backbone=backbone, num_classes=100, input_size=size)),
              "backbone": build_model(model_config(preset, "pt", backbone=backbone, input_size=size))}
    for m in models.values():
        m.eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    for precision in precisions:
        times: dict[str, list[float]] = {k: [] for k in models}
        for i in range(warm + iters):
            for k, m in models.items():
                t = time.perf_counter()
                with autocast(torch.device("cpu"), precision):
                    m(x)
                if i >= warm:
                    times[k].append(time.perf_counter() - t)
        f, b = statistics.median(times["frpt"]), statistics.median(times["backbone"])
        emit(bench="embed", preset=preset, backbone=backbone, precision=precision, channels_last=True, batch=batch,
             input_size=size, iters=iters, frpt_img_s=round(batch / f, 2), backbone_img_s=round(batch / b, 2),
             ratio_frpt_over_backbone_throughput=round(b / f, 3))


def mem_available_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def bench_retrieval(sizes: list[int], dim: int, queries: int, k: int, repeats: int) -> None:
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for n in sizes:
        need = 2 * n * dim * 4 / 2**30  # gallery + one copy at a time (RetrievalIndex's normalised copy, then faiss')
        if mem_available_gb() < need + 2:
            emit(bench="retrieval", gallery=n, dim=dim, skipped=f"needs ~{need:.1f} GiB, {mem_available_gb():.1f} GiB available")
            continue
        g = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 100_000):  # chunked to keep the float64 temporaries small
            block = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
            g[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        res: dict[str, float] = {}

        def timed(name, fn):
            fn()  # warm
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                out = fn()
                ts.append(time.perf_counter() - t)
            res[name] = round(statistics.median(ts) * 1000 / queries, 4)
            return out

        def plain():
            sims = q @ g.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            part = np.take_along_axis(sims, idx, 1)
            return np.take_along_axis(idx, np.argsort(-part, axis=1), 1)

        ref = timed("numpy_matmul_argpartition_ms_per_query", plain)
        index = RetrievalIndex(g, backend="numpy")
        got = timed("retrievalindex_numpy_ms_per_query", lambda: index.search(q, k)[1])
        del index  # free its copy before faiss makes its own
        flat = faiss.IndexFlatIP(dim)
        flat.add(g)
        fa = timed("faiss_flatip_ms_per_query", lambda: flat.search(q, k)[1])
        del flat, g
        emit(bench="retrieval", gallery=n, dim=dim, queries=queries, k=k, repeats=repeats, **res,
             same_top1=bool((got[:, 0] == ref[:, 0]).all() and (fa[:, 0] == ref[:, 0]).all()),
             faiss_speedup_over_retrievalindex=round(res["retrievalindex_numpy_ms_per_query"]
                                                     / res["faiss_flatip_ms_per_query"], 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+",
                   choices=("train", "train_memory_format", "train_grad_checkpointing", "embed", "retrieval"),
                   default=["train", "embed", "retrieval"])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--presets", nargs="+", default=["paper", "official"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--embed-batch", type=int, default=32)
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=1280, help="efficientnet_lite0's feature width")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    emit(bench="setup", threads=args.threads, torch=torch.__version__, cpus=os.cpu_count(),
         note="ratios are measured within this one run; the machine may be shared")
    for preset in args.presets:
        if "train" in args.only:
            bench_train(args.backbone, preset, args.train_batch, args.input_size, args.warm, args.steps)
        if "train_memory_format" in args.only:
            bench_train_memory_format(args.backbone, preset, args.train_batch, args.input_size, args.warm, args.steps)
        if "train_grad_checkpointing" in args.only:
            bench_train_grad_checkpointing(args.backbone, preset, args.train_batch, args.input_size, args.steps,
                                           args.threads)
        if "embed" in args.only:
            bench_embed(args.backbone, preset, args.embed_batch, args.input_size, args.warm, args.steps,
                        tuple(args.precisions))
    if "retrieval" in args.only:
        bench_retrieval(args.sizes, args.dim, 16, 10, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
