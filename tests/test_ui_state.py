"""Sidebar defaults of the app that need no running Streamlit."""


def test_dataset_folder_defaults_to_the_environment_then_to_an_existing_card_folder(tmp_path, monkeypatch):
    from frpt.ui.state import default_root

    card = {"dataset": {"name": "cub", "root": str(tmp_path)}}
    monkeypatch.delenv("FRPT_CUB_ROOT", raising=False)
    assert default_root("cub", card) == str(tmp_path)
    assert default_root("cub", {"dataset": {"name": "cub", "root": "/nonexistent/CUB_200_2011"}}) == ""
    assert default_root("cars", card) == ""  # the card's folder is for its own dataset only
    monkeypatch.setenv("FRPT_CUB_ROOT", "/data/cub")
    assert default_root("cub", card) == "/data/cub"
