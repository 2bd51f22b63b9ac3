import pytest


@pytest.fixture(scope="session")
def embedded_pipe():
    """The shipped embedded pipeline, loaded once per test session."""
    from motioncache_vllm.models.loading import load_pipeline

    return load_pipeline("embedded")
