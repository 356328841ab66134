import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The surfaces apply engine.threads' policy when they start; in tests they keep the one thread set below.
os.environ.setdefault("ARDIFF_THREADS", "1")

import pytest
import torch


# The tests run tiny models: threads only add contention on CI's two cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory):
    """Graphs compiled by backend "compile" go to a folder of the session's, never the user's cache."""
    os.environ["ARDIFF_GRAPH_CACHE"] = str(tmp_path_factory.mktemp("graphs"))
    yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A `tiny` checkpoint with random (non-zero) weights, so every path of the models is live."""
    from engine.checkpoint import save_checkpoint
    from engine.models import build_models, get_preset
    from tests.helpers import randomize_

    cfg = get_preset("tiny")
    torch.manual_seed(1234)
    vae, dit = build_models(cfg)
    randomize_(dit, std=0.15)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, vae, dit, cfg, meta={"recipe": "random weights for tests"})
    return path
