import pytest


@pytest.fixture
def small_chunks(monkeypatch):
    """Make the chunked backend split even small inputs into many ragged chunks."""
    from vmoba.attention import chunked

    monkeypatch.setattr(chunked, "_CHUNK_ELEMENTS", 40_000)
