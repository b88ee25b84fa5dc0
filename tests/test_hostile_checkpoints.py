"""Hostile checkpoints: pickles that would run code, corrupt/truncated safetensors, foreign or garbled cards.

Every case must end in one CheckpointError sentence (or a successful load where the change is harmless), never
another exception type, and nothing in a pickle may ever execute. The base checkpoint is a real, small
paper/dpp+pt model on the packaged efficientnet_lite0 weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from frpt.checkpoint import card_seal, load_card, load_checkpoint, save_checkpoint
from frpt.config import model_config, train_config
from frpt.errors import CheckpointError, FRPTError
from frpt.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from hostile_corpus import Evil, mutate  # noqa: E402 - the payload and the byte fuzzer, one copy

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "model-e0001.safetensors"
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(model_config("paper", "dpp+pt", num_classes=3, input_size=64))
    folder = tmp_path_factory.mktemp("ckpt") / "base"
    save_checkpoint(folder, model, classes=CLASSES, dataset={"name": "synthetic", "root": None},
                    train=train_config("paper", epochs=2), epoch=1,
                    train_state={f"momentum.{n}": torch.zeros_like(p) for n, p in model.named_parameters()
                                 if p.requires_grad})
    return folder


@pytest.fixture()
def ckpt(base_ckpt, tmp_path) -> Path:
    dest = tmp_path / "ckpt"
    shutil.copytree(base_ckpt, dest)
    return dest


def one_sentence(msg: str) -> str:
    assert msg and "\n" not in msg and msg.rstrip().endswith("."), repr(msg)
    assert "Traceback" not in msg
    return msg


def refused(path, match: str = "", **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, **kw)
    msg = one_sentence(str(err.value))
    assert match.lower() in msg.lower(), msg
    return msg


def edit_card(folder: Path, change, seal: bool = True) -> None:
    """Edit the card; by default re-seal it (as a determined editor would) so the field checks behind the seal
    are what must refuse the edit (test_unsealed_edits_are_refused covers the seal itself)."""
    card = json.loads((folder / "card.json").read_text())
    change(card)
    if seal:
        try:
            card["sealed_sha256"] = card_seal(card)
        except (TypeError, ValueError):  # NaN/inf cannot be sealed: leave it to the field checks
            card.pop("sealed_sha256", None)
    (folder / "card.json").write_text(json.dumps(card))


def reseal(folder: Path, name: str = WEIGHTS, key: str = "weights") -> None:
    """Record the current sha256 of ``name`` in the card, so the check after the sha256 gate is what's tested."""
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    edit_card(folder, lambda c: c["files"].update({key: name, f"{key}_sha256": digest}))


def header_len(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


# ---------------------------------------------------------------------------------------------- pickles

def test_pickle_never_runs_anywhere(ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Evil(marker))
    pickle.loads(payload)  # sanity: the payload really does create the marker when unpickled
    assert marker.exists()
    marker.unlink()

    # 1. the pickle itself as --checkpoint, under every suffix torch users give them
    for suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"):
        evil = tmp_path / f"evil{suffix}"
        evil.write_bytes(payload)
        refused(evil, "pickle")
    torch.save({"model": Evil(marker)}, tmp_path / "evil_zip.pt")  # torch's zip container with a pickle inside
    refused(tmp_path / "evil_zip.pt", "pickle")
    # 2. renamed as the weights file: first as-is (sha256 gate), then resealed so the parser itself must refuse it
    (ckpt / WEIGHTS).write_bytes(payload)
    refused(ckpt, "sha256")
    reseal(ckpt)
    refused(ckpt, "not a valid safetensors file")
    shutil.copy(tmp_path / "evil_zip.pt", ckpt / WEIGHTS)
    reseal(ckpt)
    refused(ckpt, "not a valid safetensors file")
    # 3. renamed as card.json
    (ckpt / "card.json").write_bytes(payload)
    refused(ckpt, "not a readable JSON card")
    assert not marker.exists()


def test_pickle_as_backbone_weights_is_not_executed(base_ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "backbone.pth"
    torch.save({"state_dict": Evil(marker)}, evil)
    msg = refused(base_ckpt, "could not be read", backbone_weights=evil)
    assert "backbone.pth" in msg
    assert not marker.exists()


def test_pickle_via_cli_is_one_line_exit_2(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model.pth"
    evil.write_bytes(pickle.dumps(Evil(marker)))
    proc = subprocess.run([sys.executable, "-m", "frpt", "info", "--checkpoint", str(evil)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "pickle" in proc.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- tensor files

def test_truncated_and_corrupt_safetensors(ckpt):
    data = (ckpt / WEIGHTS).read_bytes()
    for cut in (0, 4, 8, header_len(data) - 5, len(data) - 1):
        (ckpt / WEIGHTS).write_bytes(data[:cut])
        refused(ckpt, "sha256")  # the sha256 gate
        reseal(ckpt)
        refused(ckpt, "not a valid safetensors file")  # the parser behind it
    hl = header_len(data)
    for header in (b"{", b"[]", b'{"x": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 4]}}',
                   b"\xff" * 16):
        (ckpt / WEIGHTS).write_bytes(struct.pack("<Q", len(header)) + header + data[hl:])
        reseal(ckpt)
        refused(ckpt, "not a valid safetensors file")
    (ckpt / WEIGHTS).write_bytes(struct.pack("<Q", 2**63) + data[8:])  # absurd header length
    reseal(ckpt)
    refused(ckpt, "not a valid safetensors file")


def test_tampered_tensor_fails_sha256(ckpt):
    data = bytearray((ckpt / WEIGHTS).read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    (ckpt / WEIGHTS).write_bytes(bytes(data))
    msg = refused(ckpt, "does not match the sha256")
    assert WEIGHTS in msg


def test_missing_weights_file(ckpt):
    (ckpt / WEIGHTS).unlink()
    refused(ckpt, "is missing model-e0001.safetensors")


def _rewrite(ckpt: Path, change) -> None:
    tensors = load_file(str(ckpt / WEIGHTS))
    change(tensors)
    save_file(tensors, str(ckpt / WEIGHTS))
    reseal(ckpt)


def test_wrong_shapes_dtypes_keys_and_values(ckpt, base_ckpt):
    key = sorted(load_file(str(base_ckpt / WEIGHTS)))[0]
    cases = {
        "wrong shape": lambda t: t.update({key: torch.zeros(*t[key].shape[:-1], t[key].shape[-1] + 1)}),
        "wrong shape or dtype": lambda t: t.update({key: t[key].double()}),
        "missing": lambda t: t.pop(key),
        "unexpected": lambda t: t.update({"evil.extra": torch.zeros(1)}),
        "NaN or infinite": lambda t: t[key].view(-1).__setitem__(0, float("nan")),
    }
    for expected, change in cases.items():
        shutil.rmtree(ckpt)
        shutil.copytree(base_ckpt, ckpt)
        _rewrite(ckpt, change)
        refused(ckpt, expected)


# ---------------------------------------------------------------------------------------------- cards

def test_card_for_another_backbone_or_preset(ckpt, base_ckpt):
    # another backbone, consistently named everywhere: cannot be rebuilt offline / tensors do not fit
    def resnet(c):
        c["model"]["backbone"] = c["backbone"]["name"] = "resnet18"
        c["backbone"]["weights_sha256"] = None
    edit_card(ckpt, resnet)
    refused(ckpt, "resnet18")
    # the official preset, consistently: its DPP has other shapes, so the tensors do not fit
    shutil.rmtree(ckpt)
    shutil.copytree(base_ckpt, ckpt)
    official = {k: v for k, v in vars(model_config("official", "dpp+pt")).items()
                if k not in ("num_classes", "input_size")}
    edit_card(ckpt, lambda c: (c["model"].update(official), c.update(preset="official")))
    refused(ckpt, "do not fit the official/dpp+pt model")
    # half-edited cards: the top-level fields disagree with the model config
    for field, value in (("preset", "official"), ("variant", "frpt"), ("input_size", 224)):
        shutil.rmtree(ckpt)
        shutil.copytree(base_ckpt, ckpt)
        edit_card(ckpt, lambda c: c.update({field: value}))
        refused(ckpt, f"{field} {value!r} disagrees")
    shutil.rmtree(ckpt)
    shutil.copytree(base_ckpt, ckpt)
    edit_card(ckpt, lambda c: c["backbone"].update(name="resnet50"))
    refused(ckpt, "disagrees")
    # backbone weights sha256 of another file
    shutil.rmtree(ckpt)
    shutil.copytree(base_ckpt, ckpt)
    edit_card(ckpt, lambda c: c["backbone"].update(weights_sha256="0" * 64))
    refused(ckpt, "trained on backbone weights")


def test_missing_and_garbled_cards(ckpt, tmp_path):
    refused(tmp_path / "nowhere", "does not exist")
    (tmp_path / "plain.txt").write_text("hi")
    refused(tmp_path / "plain.txt", "not a checkpoint folder")
    card = (ckpt / "card.json").read_text()
    garbles = [b"", b"{", b"null", b"[1, 2]", b"\x80\x04\x95", b"\xef\xbb\xbf{}", b"[" * 100_000 + b"]" * 100_000,
               card[: len(card) // 2].encode(), b'{"format": "something-else"}',
               json.dumps({**json.loads(card), "files": []}).encode(),
               json.dumps({k: v for k, v in json.loads(card).items() if k != "classes"}).encode()]
    for raw in garbles:
        (ckpt / "card.json").write_bytes(raw)
        refused(ckpt)
    (ckpt / "card.json").unlink()
    refused(ckpt, "no card.json")


def test_oversized_card_is_not_parsed(ckpt):
    with open(ckpt / "card.json", "wb") as fh:  # sparse: 17 MiB of nothing, refused by size alone
        fh.truncate(17 * 2**20)
    refused(ckpt, "far larger than an FRPT card")


@pytest.mark.parametrize("version, expected", [(2, "newer than this library"), (99, "newer than this library"),
                                                ("1", "invalid format version"), (True, "invalid format version"),
                                                (0, "invalid format version"), (None, "invalid format version"),
                                                (1.5, "invalid format version")])
def test_format_version(ckpt, version, expected):
    edit_card(ckpt, lambda c: c.update(format_version=version))
    refused(ckpt, expected)


@pytest.mark.parametrize("name", ["../base/model-e0001.safetensors", "/etc/passwd", "..", "", ".", "sub/x.safetensors",
                                  "..\\..\\x.safetensors", "card.json", 7, None, ".model-e0001.safetensors.tmp"])
def test_path_traversal_and_bad_file_names(ckpt, name):
    edit_card(ckpt, lambda c: c["files"].update(weights=name))
    refused(ckpt, "not a .safetensors file name inside the checkpoint folder" if name is not None else "")


def test_train_state_names_are_checked_too(ckpt):
    edit_card(ckpt, lambda c: c["files"].update(train_state="../../etc/shadow"))
    with pytest.raises(CheckpointError, match="train_state"):
        load_card(ckpt)


@pytest.mark.parametrize("field, value", [("num_classes", -1), ("num_classes", 10**12), ("grid_size", 10**6),
                                          ("grid_padding", True), ("gaussian_fwhm", "wide"), ("gaussian_fwhm", -1.0),
                                          ("pooling", 3), ("saliency_stride", 0), ("variant", "evil"),
                                          ("saliency_kernel", 0), ("pooling", "median")])
def test_model_config_values_are_checked(ckpt, field, value):
    def change(c):
        c["model"][field] = value
        if field == "variant":
            c["variant"] = value
    edit_card(ckpt, change)
    refused(ckpt)


def test_card_types(ckpt, base_ckpt):
    for key, value in (("classes", "abc"), ("classes", None), ("classes", [1, 2, 3]), ("backbone", None),
                       ("model", "x"), ("mean", [0.5]), ("std", [float("nan")] * 3), ("input_size", "big"),
                       ("input_size", 10**9)):
        shutil.rmtree(ckpt)
        shutil.copytree(base_ckpt, ckpt)
        edit_card(ckpt, lambda c: c.update({key: value}))
        refused(ckpt)


@pytest.mark.parametrize("field, value", [("model.grid_padding", 38), ("model.gaussian_fwhm", 13.5),
                                          ("classes", ["a", "b", "x"]), ("std", [0.5, 0.5, 0.25]),
                                          ("backbone.weights_file", "other.pth")])
def test_unsealed_edits_are_refused(ckpt, field, value):
    """Edits no tensor shape reveals (a DPP hyper-parameter, a class name) are caught by the card's seal."""
    def change(c):
        node, *rest = field.split(".")
        (c[node] if rest else c)[rest[0] if rest else node] = value
    edit_card(ckpt, change, seal=False)
    refused(ckpt, "was modified after it was written")
    edit_card(ckpt, lambda c: c.update(sealed_sha256=12), seal=False)
    refused(ckpt, "was modified after it was written")
    edit_card(ckpt, lambda c: c.pop("sealed_sha256"), seal=False)  # an unsealed (older) card: field checks only
    load_checkpoint(ckpt)


def test_card_without_preset_is_refused(ckpt):
    edit_card(ckpt, lambda c: c.pop("preset"))
    refused(ckpt, "lacks ['preset']")


def test_harmless_edits_still_load(ckpt):
    card = json.loads((ckpt / "card.json").read_text())
    (ckpt / "card.json").write_text("\n\n" + json.dumps(card, indent=7) + "  \n")
    edit_card(ckpt, lambda c: c.update(created="yesterday", metrics={"note": "x"}, dataset={"name": "mine"}))
    model, loaded = load_checkpoint(ckpt)
    assert loaded["created"] == "yesterday" and model.config.variant == "dpp+pt"


# ---------------------------------------------------------------------------------------------- fuzzing

def _mutants(data: bytes, rng: random.Random, n: int, focus: int | None = None):
    """``n`` seeded mutations, the four kinds in turn (``focus``: positions below it only)."""
    return (mutate(data, rng, focus or len(data), i % 4) for i in range(n))


def _load_or_one_sentence(path: Path) -> str:
    try:
        load_checkpoint(path)
        return "ok"
    except FRPTError as exc:
        one_sentence(str(exc))
        return "refused"
    # any other exception type fails the test with its traceback


def test_fuzz_card_bytes(ckpt, base_ckpt):
    rng = random.Random(1234)
    raw = (base_ckpt / "card.json").read_bytes()
    outcomes = {"ok": 0, "refused": 0}
    for label, data in _mutants(raw, rng, 48):
        (ckpt / "card.json").write_bytes(data)
        outcomes[_load_or_one_sentence(ckpt)] += 1
    print("card fuzz outcomes:", outcomes)
    assert outcomes["refused"] > 0


def test_fuzz_safetensors_bytes(ckpt, base_ckpt):
    """Mutations of the weights file, resealed so that the safetensors parser and tensor checks are what refuse."""
    rng = random.Random(4321)
    raw = (base_ckpt / WEIGHTS).read_bytes()
    outcomes = {"ok": 0, "refused": 0}
    for label, data in _mutants(raw, rng, 24, focus=header_len(raw)):  # header bytes: the parser's input
        (ckpt / WEIGHTS).write_bytes(data)
        reseal(ckpt)
        outcomes[_load_or_one_sentence(ckpt)] += 1
    for label, data in _mutants(raw, rng, 8):  # anywhere, not resealed: the sha256 gate refuses every change
        (ckpt / WEIGHTS).write_bytes(data)
        if data != raw:
            with pytest.raises(CheckpointError):
                load_checkpoint(ckpt)
    print("safetensors fuzz outcomes:", outcomes)
    assert outcomes["refused"] > 0


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                    max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["format_version", "classes", "files", "input_size", "mean", "backbone", "model",
                             "files.weights", "files.weights_sha256", "backbone.name", "backbone.weights_sha256",
                             "model.num_classes", "model.grid_size", "model.saliency_kernel", "model.gaussian_fwhm",
                             "model.variant", "model.pooling", "epoch", "metrics"]),
       value=JSON)
def test_fuzz_card_values(base_ckpt, tmp_path_factory, path, value):
    folder = tmp_path_factory.mktemp("hyp")
    shutil.copy(base_ckpt / "card.json", folder / "card.json")
    os.symlink(base_ckpt / WEIGHTS, folder / WEIGHTS)

    def change(c):
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    edit_card(folder, change)
    _load_or_one_sentence(folder)


def test_half_precision_weights_must_be_what_the_card_says(ckpt, tmp_path):
    """A card recording float16 storage with fp32 tensors (or the reverse, or an unknown storage dtype) is refused
    in one sentence instead of being cast silently; an fp16 export whose values overflow is never written."""
    tensors = load_file(str(ckpt / WEIGHTS))
    save_file({k: v.half() for k, v in tensors.items()}, str(ckpt / WEIGHTS))
    reseal(ckpt)
    refused(ckpt, "do not fit")  # fp16 tensors, a card without weights_dtype
    edit_card(ckpt, lambda c: c["files"].update({"weights_dtype": "float16"}))
    load_checkpoint(ckpt)  # now they agree
    edit_card(ckpt, lambda c: c["files"].update({"weights_dtype": "int8"}))
    refused(ckpt, "weights_dtype")
    save_file(tensors, str(ckpt / WEIGHTS))
    reseal(ckpt)
    edit_card(ckpt, lambda c: c["files"].update({"weights_dtype": "float16"}))
    refused(ckpt, "not all float16")
    model = build_model(model_config("paper", "dpp+pt", num_classes=3, input_size=64))
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(1e6)  # beyond float16's 65504
    with pytest.raises(CheckpointError, match="float16 range"):
        save_checkpoint(tmp_path / "big", model, classes=CLASSES, dataset={"name": "synthetic", "root": None},
                        storage_dtype="float16")
    assert not (tmp_path / "big" / "card.json").exists()
