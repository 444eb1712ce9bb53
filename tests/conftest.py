import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """trial's mktemp() makes paths relative to the working directory: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)
