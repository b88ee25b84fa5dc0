"""Serving config (frpt/serve.py): every key's error is one sentence naming the key, raised before anything is
served; a valid config resolves shipped names and folders; the password check and the wrong-try slow-down."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frpt import serve
from frpt.demo import available_demos, named_checkpoints
from frpt.errors import ConfigError
from frpt.serve import Throttle, active_config, load_serve_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not available_demos(), reason="demo checkpoints missing")

GOOD = 'checkpoints = ["frpt", "pt"]\npassword = "s3cret"\n[datasets]\nsynthetic = ""\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def refused(path: Path, key: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_serve_config(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".") and "Traceback" not in msg, msg
    assert key in msg, msg
    return msg


def test_valid_config_resolves_names_folders_and_roots(tmp_path, fake_cub):
    ckpt = tmp_path / "runs" / "mine"
    shutil.copytree(named_checkpoints()["pt"], ckpt, ignore=shutil.ignore_patterns("gallery"))
    fake_cub(tmp_path / "data" / "CUB_200_2011")
    cfg = load_serve_config(write(tmp_path, 'checkpoints = ["frpt", "runs/mine"]\n[datasets]\nsynthetic = ""\n'
                                            'cub = "data/CUB_200_2011"\n'))
    assert [c.name for c in cfg.checkpoints] == ["frpt", "runs/mine"]
    assert cfg.folders == {"frpt": str(named_checkpoints()["frpt"].resolve()), "runs/mine": str(ckpt.resolve())}
    assert cfg.datasets == {"synthetic": None, "cub": str((tmp_path / "data" / "CUB_200_2011").resolve())}
    assert cfg.password is None and cfg.check_password("anything")


def test_example_config_is_valid_toml_with_the_documented_keys():
    import tomllib

    data = tomllib.loads((REPO / "serve.example.toml").read_text())
    assert set(data) == set(serve.KEYS)
    assert all(name in named_checkpoints() for name in data["checkpoints"])


@pytest.mark.parametrize("text, key", [
    ('checkpoints = ["nope"]\n[datasets]\nsynthetic = ""\n', "checkpoints"),
    ('checkpoints = []\n[datasets]\nsynthetic = ""\n', "checkpoints"),
    ('checkpoints = "frpt"\n[datasets]\nsynthetic = ""\n', "checkpoints"),
    ('checkpoints = ["frpt", "frpt"]\n[datasets]\nsynthetic = ""\n', "checkpoints"),
    ('checkpoints = ["/proc"]\n[datasets]\nsynthetic = ""\n', "checkpoints"),
    ('checkpoints = ["frpt"]\npassword = ""\n[datasets]\nsynthetic = ""\n', "password"),
    ('checkpoints = ["frpt"]\npassword = 1234\n[datasets]\nsynthetic = ""\n', "password"),
    ('checkpoints = ["frpt"]\n', "datasets"),
    ('checkpoints = ["frpt"]\n[datasets]\nimagenet = "x"\n', "datasets.imagenet"),
    ('checkpoints = ["frpt"]\n[datasets]\ncub = "not-there"\n', "datasets.cub"),
    ('checkpoints = ["frpt"]\n[datasets]\ncub = ""\n', "datasets.cub"),
    ('checkpoints = ["frpt"]\n[datasets]\ncub = 3\n', "datasets.cub"),
    ('checkpoints = ["frpt"]\nport = 1\n[datasets]\nsynthetic = ""\n', "port"),
])
def test_each_key_error_is_one_sentence_naming_the_key(tmp_path, text, key):
    refused(write(tmp_path, text), key)


def test_root_that_is_another_dataset_is_refused(tmp_path):
    (tmp_path / "cars" / "car_ims").mkdir(parents=True)
    msg = refused(write(tmp_path, 'checkpoints = ["frpt"]\n[datasets]\ncub = "cars"\n'), "datasets.cub")
    assert "images.txt" in msg


def test_missing_and_garbled_files(tmp_path):
    assert "does not exist" in refused(tmp_path / "absent.toml", "absent.toml")
    assert "not valid TOML" in refused(write(tmp_path, "checkpoints = [\n"), "serve.toml")


def test_active_config_only_when_serving(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv(serve.CONFIG_ENV, str(path))
    monkeypatch.delenv(serve.SERVE_ENV, raising=False)
    assert active_config() is None
    monkeypatch.setenv(serve.SERVE_ENV, "1")
    cfg = active_config()
    assert cfg is not None and cfg.password == "s3cret" and list(cfg.folders) == ["frpt", "pt"]
    assert active_config() is cfg  # validated once per process


def test_password_check():
    cfg = serve.ServeConfig([], "s3cret", {})
    assert cfg.check_password("s3cret")
    assert not cfg.check_password("s3cre") and not cfg.check_password("s3cret ") and not cfg.check_password("")


def test_the_gate_really_waits_by_default():
    """The app tests record the gate's delays instead of sleeping; the server sleeps them."""
    import time

    from frpt.ui import auth

    assert auth.SLEEP is time.sleep and auth.THROTTLE.delay(3) >= 4.0


def test_throttle_grows_per_session_and_per_server():
    t = Throttle(window_s=60, free=2, cap_s=30)
    assert [t.delay(n, now=0) for n in range(5)] == [0, 1, 2, 4, 8]
    assert t.delay(10, now=0) == 30  # capped
    for k in range(5):
        t.record_failure(now=k)
    assert t.delay(0, now=10) == 3  # 5 recent failures on the server, 2 free: a fresh session waits too
    assert t.delay(0, now=100) == 0  # outside the window


def test_cli_check_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "frpt", "serve", "--check", "--config", str(write(tmp_path, GOOD))],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert '"checkpoints": ["frpt", "pt"]' in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "frpt", "serve", "--check", "--config", str(tmp_path / "no.toml")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_the_app_server_does_not_collect_all_garbage_after_every_page_run():
    """Streamlit's default gc.collect(2) after each script run held the interpreter lock about half a second a page
    with torch and plotly loaded: twenty visitors waited a median 4.8 s a page behind it, 0.5 s without (bench/
    RESULTS.md, "The soak", session 18). `make app` and `make serve` both start Streamlit in the repository, where
    this file sets it."""
    import tomllib

    settings = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert settings["runner"]["postScriptGC"] is False
