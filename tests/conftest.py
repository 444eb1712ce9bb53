import pytest
from hypothesis import settings

# No deadlines (a timing assertion, flaky on a loaded machine) and the same examples on
# every run, so a failure in CI reproduces locally.
settings.register_profile("dhashmap", deadline=None, derandomize=True, database=None)
settings.load_profile("dhashmap")


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """trial's mktemp() makes paths relative to the working directory: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)
