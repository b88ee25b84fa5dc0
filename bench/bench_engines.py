"""Images per second of the frozen backbone on each inference engine, side by side in one run (JSON lines).

1. ``backbone``: the project's Backbone (final map) on random inputs of the model's size, batch ``--batch``, every
   engine and precision this CPU can run (torch fp32 contiguous / channels-last, torch bf16 channels-last where the
   CPU has native bf16, OpenVINO f32 / bf16, ONNX Runtime fp32), timed in ``--rounds`` interleaved rounds so load
   from elsewhere hits all alike; the median. ``agreement`` is the mean cosine of the flattened maps against torch
   fp32; ``vs_today`` is the ratio to the torch path ``frpt`` ran before engines (bf16 channels-last where native,
   else fp32 channels-last).
2. ``pipeline`` (``--root``): where the time of a gallery pass goes on real images: decoding + resizing alone,
   the engine alone on the decoded batches, and the two overlapped as ``frpt.evaluation.loader`` runs them (a
   decoding thread beside the engine; ``one_process``: one forked DataLoader process instead, the loader's default
   before session 10), on ``--images`` CUB test images.
3. ``model`` (``--root``): one batch of CUB test images through a whole checkpoint (``--checkpoint``, default the
   shipped ``cub/compact-frpt``: four views) on the default plan: seconds a batch, and how many of them the
   compiled backbone took (the rest is torch: the prompt, normalisation, flips, the head).
4. ``peak`` on paper: the backbone's multiply-adds per image (fvcore-free count of conv and linear layers) and
   this CPU's peak (cores x clock x FMA lanes), so the best engine's images/s can be read against the hardware.

Example (compiled models cached in a fresh folder, so the compile cost shows once):
  FRPT_CACHE_DIR=/tmp/frpt-bench python bench/bench_engines.py --threads 2 --root ../shared/data/CUB_200_2011
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frpt.engine import Plan, compiled_runner, installed, native_bf16  # noqa: E402
from frpt.models.backbone import Backbone  # noqa: E402


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"


def engines(bb: Backbone, size: int) -> dict[str, callable]:
    """name -> function(batch) -> final map, for every engine this machine can run."""
    contiguous = bb
    last = Backbone(bb.name).to(memory_format=torch.channels_last)

    def torch_run(model: Backbone, channels_last: bool, bf16: bool):
        def run(x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x).float()
        return run

    runs = {"torch fp32": torch_run(contiguous, False, False), "torch fp32 channels_last": torch_run(last, True, False)}
    if native_bf16():
        runs["torch bf16 channels_last"] = torch_run(last, True, True)
    for engine, precisions in (("openvino", ("fp32", "bf16")), ("onnxruntime", ("fp32",))):
        if not installed(engine):
            continue
        for precision in precisions:
            if precision == "bf16" and not native_bf16():
                continue
            started = time.perf_counter()
            runner = compiled_runner(bb, size, None, Plan(engine, precision))
            emit(kind="compile", engine=engine, precision=precision,
                 seconds=round(time.perf_counter() - started, 2))
            runs[f"{engine} {precision}"] = runner
    return runs


def bench_backbone(name: str, size: int, batch: int, rounds: int) -> dict[str, float]:
    bb = Backbone(name)
    runs = engines(bb, size)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = (x - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
    reference = runs["torch fp32"](x).flatten(1)
    agreement = {k: float(F.cosine_similarity(run(x).flatten(1), reference).mean()) for k, run in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():  # interleaved
            started = time.perf_counter()
            run(x)
            times[k].append(time.perf_counter() - started)
    speed = {k: batch / statistics.median(t) for k, t in times.items()}
    today = speed["torch bf16 channels_last" if native_bf16() else "torch fp32 channels_last"]
    for k in runs:
        emit(kind="backbone", backbone=name, input_size=size, batch=batch, engine=k, images_per_s=round(speed[k], 1),
             vs_today=round(speed[k] / today, 2), agreement=round(agreement[k], 5), rounds=rounds)
    return speed


def bench_pipeline(name: str, size: int, root: str, images: int, batch: int) -> None:
    from torch.utils.data import Subset

    from frpt.data import build_dataset, build_transform
    from frpt.engine import plan
    from frpt.evaluation import loader

    dataset = Subset(build_dataset("cub", "test", root=root, transform=build_transform(size, train=False)),
                     range(images))
    bb = Backbone(name)
    plan_ = plan("auto", "auto")
    runner = compiled_runner(bb, size, None, plan_) if plan_.engine != "torch" else bb
    mean, std = torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    decoded: list[torch.Tensor] = []
    decode = timed(lambda: decoded.extend(b[0] for b in loader(dataset, batch, workers=0)))
    with torch.no_grad():
        engine = timed(lambda: [runner((b - mean) / std) for b in decoded])
        overlapped = timed(lambda: [runner((b[0] - mean) / std) for b in loader(dataset, batch)])
        in_process = timed(lambda: [runner((b[0] - mean) / std) for b in loader(dataset, batch, workers=1)])
    emit(kind="pipeline", backbone=name, input_size=size, images=images, plan=plan_.as_dict(),
         decode_images_per_s=round(images / decode, 1), engine_images_per_s=round(images / engine, 1),
         overlapped_images_per_s=round(images / overlapped, 1),
         one_process_images_per_s=round(images / in_process, 1),
         serial_images_per_s=round(images / (decode + engine), 1))


def bench_model(checkpoint: str, root: str, batch: int, repeats: int = 3) -> None:
    from frpt import engine
    from frpt.checkpoint import load_checkpoint
    from frpt.data import build_dataset, build_transform

    model, card = load_checkpoint(checkpoint)
    data = build_dataset("cub", "test", root=root, transform=build_transform(card["input_size"], train=False))
    images = torch.stack([data[i][0] for i in range(batch)])
    plan_ = engine.plan("auto", "auto", "cpu", model)
    spent = {"engine": 0.0, "calls": 0}
    call = engine._Runner.__call__

    def timed_call(self, x):  # time inside the compiled runtime
        started = time.perf_counter()
        try:
            return call(self, x)
        finally:
            spent["engine"] += time.perf_counter() - started
            spent["calls"] += len(x)

    engine._Runner.__call__ = timed_call
    try:
        with engine.inference(model, plan_):
            engine.forward_images(model, images, plan_)  # warm-up (and compile)
            spent.update(engine=0.0, calls=0)
            started = time.perf_counter()
            for _ in range(repeats):
                engine.forward_images(model, images, plan_)
            total = (time.perf_counter() - started) / repeats
    finally:
        engine._Runner.__call__ = call
    emit(kind="model", checkpoint=checkpoint, views=card["model"].get("views", "orig"), batch=batch,
         plan=plan_.as_dict(), seconds_per_batch=round(total, 3),
         engine_seconds_per_batch=round(spent["engine"] / repeats, 3),
         torch_seconds_per_batch=round(total - spent["engine"] / repeats, 3),
         backbone_passes_per_s=round(spent["calls"] / max(spent["engine"], 1e-9), 1),
         images_per_s=round(batch / total, 1))


def conv_macs(name: str, size: int) -> int:
    """Multiply-adds of the backbone's convolutions and linear layers for one image, counted with forward hooks."""
    bb = Backbone(name)
    total = 0

    def hook(module, _inputs, output) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            total += output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * \
                module.kernel_size[1]
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in bb.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        bb(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def peak(name: str, size: int, best: float, threads: int) -> None:
    text = open("/proc/cpuinfo", encoding="utf-8").read()
    try:  # the clock the kernel reports (a VM often lists no max clock)
        mhz = float(text.split("cpu MHz")[1].split(":")[1].split()[0])
    except (IndexError, ValueError):
        mhz = None
    macs = conv_macs(name, size)
    lanes = 16 if "avx512f" in text else 8  # fp32 lanes per FMA
    # Two FMA ports per core on current x86 server cores; bf16 dot products (vdpbf16ps) do twice the fp32 work.
    fp32_peak = threads * (mhz or 0) * 1e6 * lanes * 2 * 2  # FLOP/s (an FMA is 2 FLOPs)
    emit(kind="peak", backbone=name, input_size=size, gmacs_per_image=round(macs / 1e9, 3),
         gflops_per_image=round(2 * macs / 1e9, 3), cpu_mhz=mhz, threads=threads, fp32_peak_gflops=round(fp32_peak / 1e9),
         bf16_peak_gflops=round(2 * fp32_peak / 1e9) if native_bf16() else None,
         best_images_per_s=round(best, 1), best_gflops=round(best * 2 * macs / 1e9, 1),
         fp32_peak_images_per_s=round(fp32_peak / (2 * macs), 1) if mhz else None,
         note="peak assumes 2 FMA units per core at the listed max clock; depthwise convolutions are memory-bound "
              "and reach a small fraction of it")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", help="CUB_200_2011 folder: also measure the decoding pipeline")
    p.add_argument("--images", type=int, default=512, help="--root: images for the pipeline measurement")
    p.add_argument("--checkpoint", default="assets/cub/compact-frpt", help="--root: the model measured whole")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    emit(kind="machine", cpu=cpu_name(), cores=os.cpu_count(), threads=args.threads, native_bf16=native_bf16(),
         torch=torch.__version__, numpy=np.__version__)
    speed = bench_backbone(args.backbone, args.input_size, args.batch, args.rounds)
    if args.root:
        bench_pipeline(args.backbone, args.input_size, args.root, args.images, args.batch)
        bench_model(args.checkpoint, args.root, 64)
    peak(args.backbone, args.input_size, max(speed.values()), args.threads)


if __name__ == "__main__":
    main()
