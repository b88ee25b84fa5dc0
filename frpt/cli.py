"""Command line: ``python -m frpt {train,evaluate,retrieve,embed,info}``.

Machine-readable results are one JSON object on the last line of stdout; progress goes to stderr. Bad input
(an unreadable image, a foreign checkpoint, a broken dataset folder) prints one sentence and exits with 2.
``train``, ``evaluate`` and ``embed`` also run data-parallel under ``torchrun`` (one process per device, see
:mod:`frpt.distributed`); rank 0 alone prints results and writes files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import PRESETS, VARIANTS, VIEWS, model_config, train_config
from .engine import ENGINES, PRECISIONS
from .errors import ConfigError, FRPTError

DISTRIBUTED_COMMANDS = ("train", "evaluate", "embed")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="cub, cars, aircraft, folder or synthetic")
    p.add_argument("--root", help="dataset folder (not needed for synthetic)")
    p.add_argument("--split-file", help="folder datasets: lines '<class> train|test'")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=None,
                   help="train: the global batch, split evenly over torchrun's processes; inference: per process")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="inference precision (auto: bf16 where the CPU has native bf16 or on CUDA, else fp32)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="runtime of the frozen backbone's passes without gradients (default: $FRPT_ENGINE, else "
                        "auto: OpenVINO, else ONNX Runtime, else torch; torch is exact and always available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model_args(p: argparse.ArgumentParser, preset_required: bool = False) -> None:
    p.add_argument("--preset", choices=(*PRESETS, "pt"), default=None if preset_required else "paper",
                   help="paper, official or compact (ours, for small compute); pt = the paper preset's frozen "
                        "backbone, nothing trained (--preset P --variant pt for another preset's pooling)")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="Table 1 row (default frpt)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="timm model name")
    p.add_argument("--backbone-weights", help="local .safetensors/.pth for backbones without packaged weights")
    p.add_argument("--input-size", type=int, default=None)


def _resolve_preset(args: argparse.Namespace) -> tuple[str, str]:
    preset = args.preset or "paper"
    if preset == "pt":
        return "paper", "pt"
    return preset, args.variant or "frpt"


def _dataset(args: argparse.Namespace, split: str, input_size: int, train: bool = False, recipe: str = "paper"):
    from .data import build_dataset, build_transform

    kwargs: dict[str, Any] = {}
    if args.split_file:
        kwargs["split_file"] = args.split_file
    return build_dataset(args.dataset, split, root=args.root,
                         transform=build_transform(input_size, train=train, recipe=recipe), **kwargs)


def _dataset_info(args: argparse.Namespace) -> dict[str, Any]:
    # As typed (relative paths stay relative): a card must not carry one machine's absolute folder.
    return {"name": args.dataset, "root": str(args.root) if args.root else None}


def _emit(obj: dict[str, Any]) -> None:
    if distributed.is_main():
        print(json.dumps(obj), flush=True)


def _build_untrained(args: argparse.Namespace, preset: str, variant: str, num_classes: int = 0):
    """Model for ``preset``/``variant``; its input size defaults to the backbone's (timm data config)."""
    from dataclasses import replace

    from .models import build_model

    overrides = {"saliency_bound": args.saliency_bound} if getattr(args, "saliency_bound", None) is not None else {}
    if getattr(args, "whitening", False):
        overrides["whitening"] = True
    for name in ("views", "zoom_half"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    model = build_model(model_config(preset, variant, backbone=args.backbone, num_classes=num_classes, **overrides),
                        args.backbone_weights)
    model.config = replace(model.config, input_size=args.input_size or model.backbone.default_input_size)
    return model


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    preset, variant = _resolve_preset(args)
    tcfg = train_config(preset, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                        workers=args.workers, eval_every=args.eval_every, prompt_lr_scale=args.prompt_lr_scale,
                        val_fraction=args.val_fraction, prompt_epochs=args.prompt_epochs, optimizer=args.optimizer,
                        prompt_supervision=args.prompt_supervision)
    from .models.backbone import default_input_size

    size = args.input_size or default_input_size(args.backbone)
    # The compact preset trains on cached features of its deterministic views, not on augmented images; its
    # fine-tuning row cannot (the backbone changes) and takes the ordinary loop.
    compact = preset == "compact" and variant != "finetune"
    train_set = _dataset(args, "train", size, train=not compact, recipe=tcfg.recipe)
    test_set = _dataset(args, "test", size)
    torch.manual_seed(tcfg.seed)  # initial weights of the learned parts
    args.input_size = size
    model = _build_untrained(args, preset, variant, num_classes=len(train_set.classes))
    if compact:
        from .compact import train_compact

        card = train_compact(model.to(args.device), train_set, tcfg, args.out, classes=list(train_set.classes),
                             dataset_info=_dataset_info(args), test_set=test_set, resume=args.resume,
                             feature_cache=args.feature_cache, batch_size=args.eval_batch_size,
                             workers=args.workers or None, precision=args.precision, engine=args.engine,
                             progress=not args.quiet)
    else:
        card = train(model, train_set, tcfg, args.out, classes=list(train_set.classes),
                     dataset_info=_dataset_info(args), test_set=test_set, resume=args.resume, device=args.device,
                     progress=not args.quiet, eval_batch_size=args.eval_batch_size, limit_batches=args.limit_batches,
                     engine=args.engine, grad_checkpointing=args.grad_checkpointing)
    result = {"checkpoint": card["path"], "epoch": card["epoch"], **card["metrics"]}
    if distributed.is_main():
        from .gallery import gallery_file, load_gallery

        gallery = load_gallery(gallery_file(card, test_set, args.root))  # stored by the final test evaluation
        if gallery is not None:
            result["gallery"] = str(gallery.path)
            if not args.no_umap:
                result["umap"] = _store_maps(gallery)
    _emit(result)
    return 0


def _store_maps(gallery) -> list[str]:
    """UMAP maps of ``gallery`` for the page's opening subsample and, up to FULL_MAP_MAX_POINTS, the whole split,
    so the Embedding space page reads rather than fits."""
    from .projection import DEFAULT_MAP_POINTS, FULL_MAP_MAX_POINTS, gallery_umap

    sizes = (DEFAULT_MAP_POINTS, None) if len(gallery.ids) <= FULL_MAP_MAX_POINTS else (DEFAULT_MAP_POINTS,)
    return list(dict.fromkeys(str(gallery_umap(gallery, max_points=k).path) for k in sizes))  # one if the split is small


def _model_from_args(args: argparse.Namespace):
    """A checkpoint, or the frozen backbone for ``--preset pt --backbone B`` (nothing to train)."""
    from .checkpoint import load_checkpoint

    if getattr(args, "checkpoint", None):
        return load_checkpoint(args.checkpoint, backbone_weights=args.backbone_weights, device=args.device)
    if not args.preset:
        raise FRPTError("Pass --checkpoint DIR, or --preset pt --backbone NAME for the frozen baseline.")
    preset, variant = _resolve_preset(args)
    if variant != "pt":
        raise FRPTError(f"An untrained {preset}/{variant} model retrieves nothing useful; pass --checkpoint DIR "
                        "(or --preset pt for the frozen backbone).")
    model = _build_untrained(args, preset, variant)
    card = {"input_size": model.config.input_size, "preset": preset, "variant": variant}
    return model.to(args.device).eval(), card


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import extract_embeddings, score_embeddings

    model, card = _model_from_args(args)
    test_set = _dataset(args, "test", args.input_size or card["input_size"])
    emb = extract_embeddings(model, test_set, batch_size=args.batch_size or 64, device=args.device,
                             precision=args.precision, engine=args.engine, workers=args.workers,
                             progress=not args.quiet)
    _emit({"dataset": args.dataset, "preset": card["preset"], "variant": card["variant"],
           "backbone": model.config.backbone, "input_size": card["input_size"], **emb.plan.as_dict(),
           **score_embeddings(emb)})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import export_checkpoint

    card_path = export_checkpoint(args.checkpoint, args.out, backbone_weights=args.backbone_weights, half=args.half)
    files = sorted(card_path.parent.iterdir())
    _emit({"checkpoint": str(card_path.parent), "files": [p.name for p in files],
           "bytes": sum(p.stat().st_size for p in files)})
    return 0


def _status_hook(args: argparse.Namespace, total: int):
    """``--status-file``: a callback writing the images done (at most twice a second, and the last one), or None.
    The app's background jobs (frpt.jobs) read it for their progress and time estimate."""
    if not getattr(args, "status_file", None):
        return None
    from .jobs import write_status

    last = [0.0]

    def hook(done: int, *_: object) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done >= total:
            last[0] = now
            write_status(args.status_file, done, total)

    return hook


def cmd_embed(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .gallery import gallery_embeddings

    if args.index and not args.memory_budget_gb > 0:
        raise ConfigError(f"--memory-budget-gb {args.memory_budget_gb} is not a size; give the gigabytes the "
                          "search may hold (e.g. 3).")
    model, card = load_checkpoint(args.checkpoint, backbone_weights=args.backbone_weights, device=args.device)
    dataset = _dataset(args, args.split, card["input_size"])
    gallery = gallery_embeddings(model, card, dataset, root=args.root, batch_size=args.batch_size or 64,
                                 precision=args.precision, engine=args.engine, progress=not args.quiet,
                                 recompute=args.recompute, device=args.device, shard_size=args.shard_size,
                                 on_images=_status_hook(args, len(dataset)))
    result: dict[str, Any] = {"gallery": str(gallery.path), "images": len(gallery.ids), "skipped": len(gallery.skipped),
                              "engine": gallery.engine, "precision": gallery.precision}
    if gallery.skipped and distributed.is_main():
        from .gallery import manifest_file

        result["manifest"] = str(manifest_file(gallery.path))
        print(f"warning: skipped {len(gallery.skipped)} unreadable image(s), listed with their reasons in "
              f"{result['manifest']}; first: {gallery.skipped[0]}", file=sys.stderr)
    if not args.no_umap and distributed.is_main():
        result["umap"] = _store_maps(gallery)
    if args.index and distributed.is_main():
        from dataclasses import asdict

        from .gallery import index_dir, store_index

        budget = int(args.memory_budget_gb * 2**30)
        try:
            index = store_index(gallery, budget, device=_index_device(args))
        except ValueError as exc:  # frpt.index: nothing fits the budget
            raise ConfigError(f"{exc}: raise --memory-budget-gb, or leave out --index (the gallery is stored).") \
                from None
        except torch.OutOfMemoryError:
            raise ConfigError(f"The index does not fit in the memory of {args.device}: lower --memory-budget-gb or "
                              "build it with --device cpu (the gallery is stored).") from None
        result["index"] = {"path": str(index_dir(gallery.path)), **asdict(index.spec)}
    _emit(result)
    return 0


def _index_device(args: argparse.Namespace) -> str:
    """The torch device an exact index searches on: a GPU when --device names one; on a CPU, host numpy ("")."""
    return args.device if args.device.startswith("cuda") else ""


def cmd_retrieve(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data import build_transform, open_image
    from .evaluation import embed_images
    from .gallery import gallery_embeddings, stored_index
    from .index import RetrievalIndex

    image = open_image(args.query)  # a bad query fails in a second, before the checkpoint and gallery are loaded
    model, card = load_checkpoint(args.checkpoint, backbone_weights=args.backbone_weights, device=args.device)
    query = build_transform(card["input_size"], train=False)(image)[None]
    dataset = _dataset(args, "test", card["input_size"])
    gallery = gallery_embeddings(model, card, dataset, root=args.root, batch_size=args.batch_size or 64,
                                 precision=args.precision, engine=args.engine, progress=not args.quiet)
    # with the gallery's own engine and precision, so the query matches its own row
    q = embed_images(model, query, precision=gallery.precision or args.precision,
                     engine=gallery.engine or args.engine, device=args.device)
    # the index `frpt embed --index` stored for this gallery (approximate beyond 100k rows), else exact search
    index = stored_index(gallery, device=_index_device(args))
    index = index or RetrievalIndex(gallery.embeddings.after)
    scores, idx = index.search(q, args.k)
    labels = gallery.embeddings.labels
    results = [{"rank": r + 1, "path": gallery.ids[i], "label": int(labels[i]), "class": gallery.classes[labels[i]],
                "score": round(float(s), 6)} for r, (s, i) in enumerate(zip(scores[0], idx[0])) if i >= 0]
    _emit({"query": str(args.query), "k": args.k, "index": {"kind": index.kind, "storage": index.spec.storage,
                                                             "recall_at_10": index.spec.recall_at_10},
           "results": results})
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """R@1 and MAP@R of the test split as the prompt's strength (and the crop's box scale) varies: one JSON line
    per setting, then one naming the stored curve (frpt.sweep)."""
    from .checkpoint import load_checkpoint
    from .sweep import prompt_kind, run_sweep, save_sweep, sweep_file, sweep_settings

    model, card = load_checkpoint(args.checkpoint, backbone_weights=args.backbone_weights, device=args.device)
    kind = prompt_kind(model)
    if kind is None:
        raise ConfigError(f"This checkpoint ({card.get('variant')}) has no prompt to sweep; pass an FRPT or DPP+PT "
                          "checkpoint.")
    settings = sweep_settings(kind, args.temperatures, args.scales)  # bad values fail before any image is read
    dataset = _dataset(args, "test", card["input_size"])
    result = run_sweep(model, dataset, settings, batch_size=args.batch_size or 64, precision=args.precision,
                       engine=args.engine, device=args.device, workers=args.workers,
                       feature_cache=args.feature_cache, progress=not args.quiet,
                       on_progress=_status_hook(args, len(dataset)))
    path = save_sweep(sweep_file(card, dataset, args.root), result, card)
    for setting in result.settings:
        _emit(setting.line())
    _emit({"curve": str(path), "settings": len(result.settings), "images": int(len(result.labels)),
           "engine": result.engine, "precision": result.precision, "seconds": round(result.seconds, 1)})
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    if args.checkpoint:
        model, card = load_checkpoint(args.checkpoint, backbone_weights=args.backbone_weights)
        extra = {"epoch": card.get("epoch"), "metrics": card.get("metrics", {})}
    else:
        preset, variant = _resolve_preset(args)
        model = _build_untrained(args, preset, variant, num_classes=args.num_classes)
        extra = {}
    report = model.parameter_report()
    for name, counts in report.items():
        print(f"{name:>9}: {counts['learned']:>12,} learned  {counts['frozen']:>12,} frozen", file=sys.stderr)
    _emit({"preset": model.config.preset, "variant": model.config.variant, "backbone": model.config.backbone,
           "num_classes": model.config.num_classes, "parameters": report, **extra})
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate the serving config (``make serve`` runs this before Streamlit starts)."""
    from .serve import config_path, load_serve_config

    if not args.check:
        raise ConfigError("`frpt serve` only checks the config (--check); start the server with `make serve`.")
    path = Path(args.config) if args.config else config_path()
    cfg = load_serve_config(path)
    _emit({"config": str(path), "checkpoints": [c.name for c in cfg.checkpoints], "datasets": list(cfg.datasets),
           "password": cfg.password is not None})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m frpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a preset/variant; checkpoint every epoch")
    _add_data_args(p); _add_model_args(p); _add_runtime_args(p)  # noqa: E702
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="default: the preset's (sgd; adamw for compact)")
    p.add_argument("--prompt-lr-scale", type=float, help="learning-rate multiplier for the DPP (default 1.0)")
    p.add_argument("--saliency-bound", type=float,
                   help="squash the DPP's saliency logits to (-B, B) so its softmax cannot turn one-hot "
                        "(default 0: unbounded, as published)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (training and evaluation)")
    p.add_argument("--eval-every", type=int, default=0, help="log test R@1 every N epochs (0: only at the end)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--limit-batches", type=int, help="cap batches per epoch (smoke runs)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the backbone's activations in the backward pass: the same gradients in about half "
                        "the memory, a slower step (the official preset's batch of 256 at 224 px needs ~21 GB "
                        "without; the compact preset trains on cached maps and ignores it)")
    p.add_argument("--feature-cache", help="compact preset: folder of cached frozen feature maps, shareable between "
                                           "runs on the same data (default: <out>/features)")
    p.add_argument("--val-fraction", type=float, help="compact preset: share of the training classes held out "
                                                       "to choose epochs (default 0.2)")
    p.add_argument("--prompt-epochs", type=int, help="compact preset: epochs for the prompt before the head")
    p.add_argument("--prompt-supervision", choices=("labels", "boxes"),
                   help="compact preset: train the crop from class labels (default) or, a named departure, from the "
                        "training images' boxes (datasets with boxes: cub, synthetic)")
    p.add_argument("--whitening", action="store_true",
                   help="compact preset: whiten the embedding by the training classes' within-class covariance, "
                        "a named departure (bench/RESULTS.md, \"Compact head sweep\")")
    p.add_argument("--views", help=f"comma-separated views whose embeddings are averaged (of {', '.join(VIEWS)}; "
                                   "default: the preset's, orig,flip,crop,crop-flip for compact); zoom,zoom-flip "
                                   "add a part zoom on the crop prompt's saliency peak, a named departure (issue 30)")
    p.add_argument("--zoom-half", type=float,
                   help="compact preset, zoom views: the square's half-side in image fractions (default: chosen on "
                        "the validation classes among 0.25-0.45)")
    p.add_argument("--no-umap", action="store_true",
                   help="skip the UMAP maps of the stored test gallery (the app then fits them on first visit)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="zero-shot Recall@K on the test split (leave-one-out, cosine)")
    _add_data_args(p); _add_model_args(p, preset_required=True); _add_runtime_args(p)  # noqa: E702
    p.add_argument("--checkpoint")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: none; "
                   "a thread decodes beside the engine)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("embed", help="store gallery embeddings (and UMAP) beside a checkpoint")
    _add_data_args(p); _add_runtime_args(p)  # noqa: E702
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backbone-weights")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--recompute", action="store_true", help="discard stored embeddings and finished shards")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="images per shard; a killed run resumes after its last finished shard")
    p.add_argument("--no-umap", action="store_true")
    p.add_argument("--status-file", help="write the images done as JSON here while embedding (the app's jobs)")
    p.add_argument("--index", action="store_true",
                   help="also build the search index frpt.index chooses for the gallery's size (exact up to 100k "
                        "rows, then HNSW or IVF; exact in GPU memory with --device cuda) and save it beside the "
                        "gallery; `frpt retrieve` then uses it")
    p.add_argument("--memory-budget-gb", type=float, default=3.0, help="--index: memory the search may hold")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("retrieve", help="top-K test images for a query image")
    _add_data_args(p); _add_runtime_args(p)  # noqa: E702
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backbone-weights")
    p.add_argument("--query", required=True)
    p.add_argument("--k", type=int, default=10)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("sweep", help="R@1 / MAP@R of the test split as the prompt's strength varies")
    _add_data_args(p); _add_runtime_args(p)  # noqa: E702
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backbone-weights")
    p.add_argument("--temperatures", type=float, nargs="+",
                   help="saliency temperatures besides the learned 1.0 and the identity (default 0.25 0.5 0.75 1.5 "
                        "2 4; below 1 a stronger zoom)")
    p.add_argument("--scales", type=float, nargs="+",
                   help="crop prompt: the learned box's size times these (default 0.6 0.8 1.25 1.6)")
    p.add_argument("--feature-cache", help="crop prompt: the compact preset's feature cache folder (frpt train "
                                           "--feature-cache); its test maps are reused and completed")
    p.add_argument("--status-file", help="write the images done as JSON here while sweeping (the app's jobs)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: none; "
                   "a thread decodes beside the engine)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="copy a checkpoint without its optimiser state, for sharing")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="new folder")
    p.add_argument("--backbone-weights")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16 (half the size; loaded back as fp32; re-evaluate the export)")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; export prints only its JSON line")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="check the serving config (serve.toml) that `make serve` runs the app from")
    p.add_argument("--check", action="store_true", help="validate the config and exit (0: servable)")
    p.add_argument("--config", help="config file (default: $FRPT_SERVE_CONFIG, else serve.toml in the repository)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="learned vs frozen parameters per module")
    _add_model_args(p, preset_required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--num-classes", type=int, default=100)
    p.set_defaults(func=cmd_info)
    return parser


def _check_launch(args: argparse.Namespace) -> None:
    """Refuse, before any process group exists, what cannot run under torchrun with several processes."""
    if distributed.launched_world_size() == 1:
        return
    if args.command not in DISTRIBUTED_COMMANDS:
        raise ConfigError(f"`frpt {args.command}` runs in one process; start it with python -m frpt, not torchrun.")
    preset, variant = _resolve_preset(args) if args.command == "train" else (None, None)
    if preset == "compact" and variant != "finetune":
        raise ConfigError("The compact preset trains on cached features in a single process; run it without "
                          "torchrun (or with --nproc_per_node 1).")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.command == "info" and not args.checkpoint and not args.preset:
        args.preset = "paper"
    try:
        if os.environ.get("FRPT_JOB_PARENT"):  # frpt.jobs.PARENT_ENV: a background job of the app
            from .jobs import bind_to_parent

            bind_to_parent()  # ends with the server that started it
        _check_launch(args)
        with distributed.session(getattr(args, "device", "cpu")):
            if distributed.is_distributed() and hasattr(args, "device"):
                args.device = str(distributed.device_for(args.device))  # cuda -> cuda:LOCAL_RANK
            return args.func(args)
    except FRPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out under a file, a read-only folder, a full disk: one line, no traceback
        from .data import display_path

        where = f" {display_path(exc.filename)}" if exc.filename else ""
        print(f"error: cannot access{where} ({exc.strerror or type(exc).__name__}); check the path, its "
              "permissions and the free disk space.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
