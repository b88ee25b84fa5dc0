"""Data-parallel training under torchrun: 2 CPU processes (gloo) with per-process batch B/2 train like 1 process with
batch B (losses and learned tensors within float tolerance), resume exactly, and shard evaluation and gallery
embedding in dataset order. One torchrun launch runs this file as its worker (``__main__`` below).

The official preset is used because its head has BatchNorm (CAH conv block, BNNeck): with per-process statistics two
processes would *not* match one, so this checks the global-batch BatchNorm too. Images use the deterministic test
transform: with random augmentation each process draws its own crops (frpt.training), so only the batches, not the
augmentations, would be those of a single process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crashing import Crash, CrashingDataset  # tests/crashing.py

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
DATA = dict(num_classes=4, images_per_class=8, image_size=64)  # 2 train / 2 test classes, 16 images each
BATCH, EPOCHS, LIMIT = 8, 2, 2
CRASH_AFTER = LIMIT * BATCH // 2  # items one of two processes reads in epoch 1: the next one is in epoch 2


def _datasets():
    from frpt.data import build_dataset, build_transform

    transform = build_transform(SIZE, train=False)
    return (build_dataset("synthetic", "train", transform=transform, **DATA),
            build_dataset("synthetic", "test", transform=transform, **DATA))


def _model():
    from frpt.config import model_config
    from frpt.models import build_model

    torch.manual_seed(0)
    return build_model(model_config("official", "frpt", num_classes=2, input_size=SIZE))


def _train(out: Path, resume: bool = False, crash: bool = False) -> dict:
    from frpt.config import train_config
    from frpt.training import train

    train_set, test_set = _datasets()
    # A well-conditioned run (the loss falls), so float rounding stays rounding: with the DPP at the full rate its
    # saliency collapses within a step or two (docs/presets.md, "Known problem") and a diverging run turns 1e-7
    # differences into different runs, which says nothing about the data parallelism.
    cfg = train_config("official", epochs=EPOCHS, batch_size=BATCH, lr=0.002, momentum=0.9, warmup_iters=0, seed=1,
                       prompt_lr_scale=2e-4)
    return train(_model(), CrashingDataset(train_set, CRASH_AFTER) if crash else train_set, cfg, out,
                 classes=list(train_set.classes), dataset_info={"name": "synthetic", "root": None}, test_set=test_set,
                 resume=resume, progress=False, eval_batch_size=3, limit_batches=LIMIT)


def _finetune_gradients() -> dict[str, torch.Tensor]:
    """One float64 step of the ``finetune`` row (every backbone BatchNorm trains, on 2x2 maps at the end) on 4 images,
    this process's slice of them: the DDP-averaged gradients and BatchNorm statistics, which must be one process's
    on all 4 up to float64 rounding. (In float32 the same step differs by ~1e-3: many BatchNorms over a few values
    amplify rounding, which is why the training comparison above uses the head-only official row.)"""
    from torch.nn.parallel import DistributedDataParallel

    from frpt import distributed
    from frpt.config import model_config
    from frpt.losses import cross_entropy
    from frpt.models import build_model

    train_set, _ = _datasets()
    items = [train_set[i] for i in (3, 6, 1, 12)]
    images, targets = torch.stack([x[0] for x in items]).double(), torch.tensor([x[1] for x in items])
    torch.manual_seed(0)
    model = build_model(model_config("official", "finetune", num_classes=2, input_size=SIZE)).double().train()
    net, world, rank = model, distributed.world_size(), distributed.rank()
    if world > 1:
        net = DistributedDataParallel(distributed.sync_batchnorm(model), forward_sync_buffers=False)
    part = slice(rank * len(items) // world, (rank + 1) * len(items) // world)
    cross_entropy(net(images[part]).logits, targets[part], 0.3).backward()
    out = {f"grad.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {**out, **{k: v for k, v in model.state_dict().items() if "running" in k}}


def _worker(out: Path) -> None:
    """Run by each torchrun process: train, crash + resume, then sharded evaluation and gallery."""
    from frpt import distributed
    from frpt.checkpoint import load_checkpoint
    from frpt.evaluation import evaluate
    from frpt.gallery import gallery_embeddings

    torch.set_num_threads(1)
    with distributed.session("cpu"):
        assert distributed.world_size() == 2
        _train(out / "two")
        try:
            _train(out / "crashed", crash=True)
        except Crash:
            pass
        distributed.barrier()  # rank 0 has committed epoch 1 before anyone resumes
        _train(out / "crashed", resume=True)
        model, card = load_checkpoint(out / "two")
        _, test_set = _datasets()
        # recompute: training already stored its final test evaluation as the gallery; the shards are under test
        gallery_embeddings(model, card, test_set, batch_size=2, shard_size=3, progress=False, precision="fp32",
                           recompute=True)
        metrics = evaluate(model, test_set, batch_size=3, progress=False)
        grads = _finetune_gradients()
        if distributed.is_main():
            (out / "metrics.json").write_text(json.dumps(metrics))
            save_file({k: v.contiguous() for k, v in grads.items()}, str(out / "finetune-step.safetensors"))


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _tensors(out: Path, key: str = "weights") -> dict[str, torch.Tensor]:
    from frpt.checkpoint import load_card, verified_file

    return load_file(str(verified_file(out, load_card(out), key)))


def test_two_processes_train_like_one_with_the_same_global_batch(launched, tmp_path):
    from frpt.checkpoint import load_card
    from frpt.training import read_log

    one = _train(tmp_path / "one")
    two = load_card(launched / "two")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == BATCH == two["train"]["batch_size"]
    loss_one = [float(r["train_loss"]) for r in read_log(tmp_path / "one")]
    loss_two = [float(r["train_loss"]) for r in read_log(launched / "two")]
    assert len(loss_one) == EPOCHS and loss_two == pytest.approx(loss_one, rel=1e-4, abs=1e-5)
    assert loss_one[0] != pytest.approx(loss_one[1], abs=1e-3)  # the epochs really differ

    initial = _model().learned_state_dict()
    a, b = _tensors(tmp_path / "one"), _tensors(launched / "two")
    assert a.keys() == b.keys() and any(".running_var" in k for k in a)  # BatchNorm statistics are compared too
    # Float tolerance: the frozen backbone's convolutions on batches of 4 and of 8 round differently (~1e-6), and
    # training carries that on. Measured worst on an AVX-512 CPU (whose kernels round more differently by batch
    # than AVX2's): weights 8e-5, BatchNorm running statistics (averages of activations) 9e-4, relative to
    # max(1, |tensor|); the bounds leave 5x room.
    diff = {name: (a[name].double() - b[name].double()).abs().max().item() for name in a}
    rel = {name: diff[name] / max(1.0, a[name].abs().max().item()) for name in a}
    for name in a:
        assert rel[name] <= (5e-3 if ".running_" in name else 5e-4), (name, rel[name])
    for name in ("head.classifier.weight", "head.neck.running_mean"):  # real updates, far above the differences
        assert (a[name] - initial[name]).abs().max().item() > 100 * diff[name], name
    assert two["metrics"]["queries"] == one["metrics"]["queries"] == 16
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)


def test_global_batchnorm_makes_a_finetune_step_match_one_process_in_float64(launched):
    one = _finetune_gradients()
    two = load_file(str(launched / "finetune-step.safetensors"))
    assert one.keys() == two.keys() and sum(k.startswith("grad.backbone.") for k in one) > 100
    assert sum(k.endswith("running_var") for k in one) > 40  # the backbone's BatchNorms
    for name in one:
        scale = one[name].abs().max().item()
        assert (one[name] - two[name]).abs().max().item() <= 1e-9 * max(scale, 1e-3), name


def test_resume_under_two_processes_is_exact(launched):
    from frpt.training import read_log

    for key in ("weights", "train_state"):
        a, b = _tensors(launched / "two", key), _tensors(launched / "crashed", key)
        assert a.keys() == b.keys() and len(a) > 0
        for name in a:
            assert torch.equal(a[name], b[name]), f"{key}:{name} differs after resume"
    strip = lambda rows: [(r["epoch"], r["train_loss"], r["lr"], r["recall@1"]) for r in rows]  # noqa: E731
    assert strip(read_log(launched / "two")) == strip(read_log(launched / "crashed"))


def test_sharded_evaluation_and_gallery_follow_dataset_order(launched):
    from frpt.checkpoint import load_checkpoint
    from frpt.evaluation import evaluate, extract_embeddings
    from frpt.gallery import gallery_file, load_gallery, manifest_file

    model, card = load_checkpoint(launched / "two")
    _, test_set = _datasets()
    single = extract_embeddings(model, test_set, batch_size=3, progress=False)
    gallery = load_gallery(gallery_file(card, test_set, None))
    assert gallery is not None and gallery.skipped == []
    assert gallery.ids == [s for s, _ in test_set.samples]
    np.testing.assert_array_equal(gallery.embeddings.labels, single.labels)
    # float tolerance: the backbone rounds batches of 2 (shards) and of 3 differently
    np.testing.assert_allclose(gallery.embeddings.after, single.after, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gallery.embeddings.before, single.before, rtol=1e-4, atol=1e-4)
    assert json.loads(manifest_file(gallery.path).read_text())["complete"] is True
    assert not gallery.path.with_name(f"{gallery.path.stem}.parts").exists()
    metrics = json.loads((launched / "metrics.json").read_text())
    assert metrics == pytest.approx(evaluate(model, test_set, batch_size=3, progress=False), abs=1e-6)


def test_epoch_loader_gives_each_process_its_slice_of_the_same_global_batches():
    from frpt.config import train_config
    from frpt.training import epoch_loader

    class Indices(torch.utils.data.Dataset):
        def __len__(self):
            return 22

        def __getitem__(self, i):
            return torch.zeros(1), 0, i

    for workers in (0, 2):
        cfg = train_config("paper", batch_size=4, seed=3, workers=workers)
        one = [b[2].tolist() for b in epoch_loader(Indices(), cfg, epoch=5)]
        parts = [[b[2].tolist() for b in epoch_loader(Indices(), cfg, 5, rank, 2)] for rank in range(2)]
        assert len(one) == 5 and [p0 + p1 for p0, p1 in zip(*parts)] == one
    odd = train_config("paper", batch_size=6, seed=3)
    from frpt.errors import ConfigError
    with pytest.raises(ConfigError, match="multiple of 4"):
        list(epoch_loader(Indices(), odd, 0, 0, 4))


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "synthetic", "--preset", "compact", "--out", "/nonexistent/never-written"],
    ["info", "--preset", "paper"],
])
def test_torchrun_refuses_what_runs_in_one_process(monkeypatch, capsys, argv):
    from frpt.cli import main

    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2  # refused before any process group is created (nothing waits for rank 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "torchrun" in err[0]


@pytest.mark.slow  # one more torchrun launch (two interpreters importing torch and timm)
def test_cli_under_torchrun_writes_once_and_records_the_world_size(tmp_path):
    from frpt.checkpoint import load_card

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "frpt",
           "train", "--dataset", "synthetic", "--preset", "paper", "--variant", "dpp+pt", "--input-size", "64",
           "--batch-size", "8", "--epochs", "1", "--limit-batches", "1", "--threads", "1", "--device", "cpu",
           "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["epoch"] == 1  # rank 0 alone prints
    card = load_card(out)
    assert card["world_size"] == 2 and card["global_batch_size"] == 8
    assert sorted(os.listdir(out)) == sorted(["card.json", "gallery", "log.csv", card["files"]["weights"],
                                              card["files"]["train_state"]])
    # rank 0 stored the test gallery and its maps once (no second process's copy, no leftover temps)
    assert sorted(p.name for p in (out / "gallery").iterdir()) == sorted(
        [Path(lines[0]["gallery"]).name, *(Path(u).name for u in lines[0]["umap"]), Path(lines[0]["gallery"]).stem + ".lock"])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
