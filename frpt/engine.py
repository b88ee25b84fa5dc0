"""Inference engines for the frozen backbone: how every pass without gradients runs.

The backbone is frozen, so its forward pass without gradients (galleries, evaluation, the compact preset's feature
cache, queries, the warp gallery) is a fixed function that a compiled runtime runs several times faster than eager
PyTorch on a CPU (bench/bench_engines.py; bench/RESULTS.md). The learned parts (prompt, head) stay in torch: they
are small, and gradients flow through them.

Engines:

- ``torch``: eager PyTorch, channels-last, bf16 autocast where the CPU has native bf16. Exact, always available,
  and the only engine on a GPU or wherever gradients flow through the backbone.
- ``openvino``: the backbone converted to OpenVINO IR and compiled for this CPU; bf16 through its
  ``INFERENCE_PRECISION_HINT`` where the CPU has native bf16 (AVX512-BF16/AMX), else f32.
- ``onnxruntime``: the backbone exported to ONNX, run by ONNX Runtime's CPU provider in fp32 (it has no CPU bf16
  kernels, so a bf16 request runs, and is recorded, as fp32).

``auto`` picks OpenVINO, then ONNX Runtime, then torch, whichever is installed first in that order: OpenVINO was
the fastest at both precisions on the CPUs measured (README, "Inference engines").

A compiled model is cached on disk under ``FRPT_CACHE_DIR`` (default ``~/.cache/frpt``; ``XDG_CACHE_HOME`` is
honoured), in a folder keyed by the backbone's weights, input size, the output (final map or a stage), precision and
the runtime's version, so only the first use pays for converting. The folder is built under a temporary name and
renamed when complete: an interrupted compile leaves nothing that is ever read.

Callers never see which runtime ran: :func:`inference` swaps the model's backbone for the compiled one for the
duration of a ``with`` block, and everything above (``FRPT.forward``, evaluation, gallery, feature cache) runs as
before.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from .errors import ConfigError
from .models import FRPT
from .models.backbone import Backbone

ENGINES = ("auto", "torch", "openvino", "onnxruntime")
COMPILED = ("openvino", "onnxruntime")  # auto's order of preference
PRECISIONS = ("auto", "fp32", "bf16")
ENGINE_ENV = "FRPT_ENGINE"  # the app's (and any caller's) default engine
CACHE_ENV = "FRPT_CACHE_DIR"
EXPORT_VERSION = 2  # how _export builds a model (2: traced and frozen first); part of the cache key


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
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" or native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing (the torch-side parts of a pass: the prompt and the head, and the backbone on the
    torch engine)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def installed(engine: str) -> bool:
    """Whether the runtime behind ``engine`` can be imported (torch always can)."""
    return engine == "torch" or importlib.util.find_spec(engine) is not None


def runtime_version(engine: str) -> str:
    return torch.__version__ if engine == "torch" else importlib.metadata.version(engine)


@dataclass(frozen=True)
class Plan:
    """How a pass without gradients runs: the engine and the precision it computes the backbone at. Galleries and
    cards record both, and a query is embedded with its gallery's plan so it matches its own row."""

    engine: str
    precision: str

    def as_dict(self) -> dict[str, str]:
        return {"engine": self.engine, "precision": self.precision}


def plan(engine: str | None = "auto", precision: str = "auto", device: torch.device | str = "cpu",
         model: FRPT | None = None) -> Plan:
    """Resolve ``engine`` (None: ``$FRPT_ENGINE``, else auto) and ``precision`` for ``device`` (and ``model``):
    the plan is what will really run.

    A compiled engine is a CPU runtime for a frozen backbone: on another device, or for a fine-tuned backbone
    (whose weights are not the file the compiled model is keyed by), the plan is torch. An explicitly named engine
    that is not installed is one sentence naming its package."""
    engine = engine or os.environ.get(ENGINE_ENV) or "auto"
    if engine not in ENGINES:
        raise ConfigError(f"Unknown inference engine {engine!r} (from --engine or ${ENGINE_ENV}); use one of "
                          f"{', '.join(ENGINES)}.")
    precision = resolve_precision(precision, device)
    if torch.device(device).type != "cpu" or (model is not None and not _source(model.backbone).frozen):
        return Plan("torch", precision)
    if engine == "auto":
        engine = next((e for e in COMPILED if installed(e)), "torch")
    elif not installed(engine):
        raise ConfigError(f"The {engine} engine needs the Python package `{engine}`, which is not installed; "
                          f"`pip install {engine}` or choose --engine auto.")
    if engine == "onnxruntime" or (engine == "openvino" and not native_bf16()):
        precision = "fp32"  # no bf16 kernels on ONNX Runtime's CPU provider; OpenVINO runs f32 without native bf16
    return Plan(engine, precision)


def _source(backbone: nn.Module) -> Backbone:
    return backbone.source if isinstance(backbone, CompiledBackbone) else backbone


# ------------------------------------------------------------------------------------------ compiled backbones

def cache_dir() -> Path:
    """Where compiled models live: ``$FRPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/frpt`` or ``~/.cache/frpt``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "frpt"


def _weights_key(backbone: Backbone) -> str:
    """The weights file's sha256, or for weights not read from a file (random test weights) a digest of the
    tensors themselves."""
    if backbone.weights_sha256:
        return backbone.weights_sha256
    digest = hashlib.sha256()
    for name, tensor in backbone.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class _Output(nn.Module):
    """The part of the backbone a compiled model computes: the final map, or the stage of a given stride."""

    def __init__(self, backbone: Backbone, stride: int | None):
        super().__init__()
        self.backbone, self.stride = backbone, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) if self.stride is None else self.backbone.stage_features(x, self.stride)


def import_openvino():
    """``import openvino`` without its usage telemetry. OpenVINO's converter, which ``import openvino`` loads, sends
    usage events to Google Analytics from forked children and writes a client id and counters under ``~/intel``
    unless the user opted out (``openvino_telemetry``: consent is assumed when no opt-out file exists). A library
    behind a reviewers' server must not phone home nor write outside ``FRPT_CACHE_DIR``: with ``openvino_telemetry``
    unimportable (a ``None`` entry in ``sys.modules`` makes its import fail), OpenVINO falls back to its own no-op
    stub (``openvino/tools/ovc/telemetry_stub.py``). Every import of OpenVINO in this package goes through here."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


@functools.lru_cache(maxsize=1)
def _openvino_core():
    """One OpenVINO Core for the process, alive as long as the models compiled by it (a Core per model, dropped
    after compiling, leaves its plugin's lifetime to the compiled models)."""
    return import_openvino().Core()


class _Runner:
    """One compiled backbone output: numpy float32 in, float32 torch tensor out. Thread-safe (a request per call)."""

    def __init__(self, engine: str, folder: Path, precision: str, threads: int):
        self.engine = engine
        if engine == "openvino":
            self.compiled = _openvino_core().compile_model(str(folder / "model.xml"), "CPU", {
                "CACHE_DIR": str(folder / "blobs"),  # compiled kernels, OpenVINO's own cache
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",  # one request uses every thread: batches come one at a time
                "INFERENCE_NUM_THREADS": threads})
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                                providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self.engine == "openvino":
            out = self.compiled.create_infer_request().infer({0: array}, share_inputs=True)[0]
        else:
            out = self.session.run(None, {"images": array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _export(engine: str, module: nn.Module, size: int, folder: Path) -> None:
    """Write the compiled model's files into ``folder`` (a fresh temporary folder)."""
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad(), torch.autocast("cpu", enabled=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converters' tracing deprecation notes, not the user's concern
        if engine == "openvino":
            ov = import_openvino()
            # Traced and frozen here rather than by the converter: its own trace re-runs the model to check the
            # trace, and freezing folds the constants before conversion; together about 2.0 -> 1.2-1.5 s of a cold
            # gallery's first batch on 2 cores (hand timings, bench/RESULTS.md session 17), same outputs to float32
            # rounding.
            traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
            model = ov.convert_model(traced, example_input=example, input=[ov.PartialShape([-1, 3, size, size])])
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)  # the frozen weights as they are
        else:
            torch.onnx.export(module, example, str(folder / "model.onnx"), input_names=["images"],
                              output_names=["maps"], dynamic_axes={"images": {0: "batch"}, "maps": {0: "batch"}},
                              dynamo=False)


_LOADED: dict[str, _Runner] = {}  # compiled models of this process, by their cache key
_LOAD_LOCK = threading.Lock()


def compiled_runner(backbone: Backbone, size: int, stride: int | None, plan_: Plan) -> _Runner:
    """The compiled model of ``backbone``'s final map (``stride`` None) or stage at ``stride`` for ``size`` px
    inputs: loaded from the disk cache, converted into it on first use."""
    key = {"timm": backbone.model.default_cfg.get("architecture", backbone.name), "weights": _weights_key(backbone),
           "input_size": int(size), "output": "final" if stride is None else f"stride{stride}",
           "precision": plan_.precision, "engine": plan_.engine, "version": runtime_version(plan_.engine),
           "torch": torch.__version__, "export": EXPORT_VERSION}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    with _LOAD_LOCK:
        if name in _LOADED:
            return _LOADED[name]
        folder = cache_dir() / "engines" / f"{plan_.engine}-{name}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        # One process converts and compiles (filling OpenVINO's blob cache) while another asking for the same model
        # (the app server beside its gallery job) waits, then loads the result in a fraction of the time.
        locks = cache_dir() / "locks"  # beside engines/, never inside it: engines/ holds only finished models
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{folder.name}.lock")):
            if (folder / "key.json").is_file():
                try:
                    runner = _LOADED[name] = _Runner(plan_.engine, folder, plan_.precision, torch.get_num_threads())
                    return runner
                except Exception:  # noqa: BLE001 - a damaged cache entry (disk, a hand edit): convert it again
                    shutil.rmtree(folder, ignore_errors=True)
            _convert(backbone, size, stride, plan_, key, folder)
            runner = _LOADED[name] = _Runner(plan_.engine, folder, plan_.precision, torch.get_num_threads())
            return runner


def _convert(backbone: Backbone, size: int, stride: int | None, plan_: Plan, key: dict, folder: Path) -> None:
    """Convert into a temporary folder beside ``folder``, key.json last, then rename it into place: a killed
    conversion leaves no folder that is ever read."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _export(plan_.engine, _Output(backbone, stride).eval(), size, tmp)
        (tmp / "key.json").write_text(json.dumps(key, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same folder first: use theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class CompiledBackbone(nn.Module):
    """Stands in for a frozen :class:`Backbone` inside :func:`inference`: the same calls (``forward``,
    ``stage_features``), computed by a compiled runtime. With gradients enabled it defers to the torch backbone,
    so nothing that needs them (attributions, training) ever runs through it."""

    def __init__(self, source: Backbone, size: int, plan_: Plan):
        super().__init__()
        self.source, self.size, self.plan = source, size, plan_
        self.runners: dict[int | None, _Runner] = {}  # by stride (None: the final map), looked up once each

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.source, name)  # num_features, feature_info, mean/std, ...

    def _run(self, x: torch.Tensor, stride: int | None) -> torch.Tensor:
        if stride not in self.runners:
            self.runners[stride] = compiled_runner(self.source, self.size, stride, self.plan)
        return self.runners[stride](x).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.shape[-1] != self.size:
            return self.source(x)
        return self._run(x, None)

    def stage_features(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        if torch.is_grad_enabled() or x.shape[-1] != self.size:
            return self.source.stage_features(x, stride)
        return self._run(x, stride)


_MODEL_LOCKS: dict[int, threading.RLock] = {}


@contextlib.contextmanager
def inference(model: FRPT, plan_: Plan, device: torch.device | str = "cpu") -> Iterator[None]:
    """``model`` ready for passes without gradients under ``plan_`` (from :func:`plan` for this model and device)
    for the duration: eval mode, on ``device``, no autograd, and its frozen backbone replaced by the compiled one
    (compiled engines) or channels-last (torch, where it is 2x faster than contiguous on these CPUs). Everything is restored on exit; two threads using one model take
    turns."""
    device = torch.device(device)
    lock = _MODEL_LOCKS.setdefault(id(model), threading.RLock())
    with lock:
        was_training, backbone = model.training, model.backbone
        source = _source(backbone)  # nested inside another inference block
        try:
            if plan_.engine == "torch":
                model.backbone = source
                model.eval().to(device=device, memory_format=torch.channels_last)
            else:
                model.eval().to(device)
                model.backbone = compiled = CompiledBackbone(source, model.config.input_size, plan_)
                compiled.runners[None] = compiled_runner(source, model.config.input_size, None, plan_)  # before
            with torch.no_grad():
                yield
        finally:
            model.backbone = backbone
            model.to(memory_format=torch.contiguous_format).train(was_training)


def forward_images(model: FRPT, images: torch.Tensor, plan_: Plan, device: torch.device | str = "cpu", **kwargs):
    """One batch through ``model`` inside :func:`inference`: images on ``device``; on the torch engine
    channels-last under the plan's autocast, on a compiled one the prompt and head in fp32 (the runtime takes NCHW
    arrays as they are). ``kwargs`` go to the model's forward (a prompt edit, known maps). Returns the model's
    :class:`~frpt.models.frpt.FRPTOutput`."""
    device = torch.device(device)
    images = images.to(device)
    if plan_.engine == "torch":
        with autocast(device, plan_.precision):
            return model(images.contiguous(memory_format=torch.channels_last), **kwargs)
    return model(images, **kwargs)


def backbone_maps(model: FRPT, images: torch.Tensor, plan_: Plan) -> torch.Tensor:
    """The frozen backbone's final map of ``images`` in [0, 1] inside :func:`inference` (on its engine)."""
    with autocast(images.device, plan_.precision if plan_.engine == "torch" else "fp32"):
        return model.backbone(model.normalize(images))


__all__ = ["ENGINES", "PRECISIONS", "Plan", "plan", "inference", "forward_images", "native_bf16", "import_openvino",
           "resolve_precision", "autocast", "installed", "cache_dir", "compiled_runner", "CompiledBackbone"]
