"Shared fixtures: the embedded model is loaded once per test session (from the cache in SEQLAB_HOME)."
import os
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol():
    from seqlab.zoo import load
    return load("smollm2-135m")
