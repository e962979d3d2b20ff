import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# For the processes the tests start (training runs, torchrun ranks, sweep workers), which share two
# cores: OpenMP threads that spin while waiting would starve each other. Set after torch loaded
# here, so this process keeps OpenMP's default (its own ops run on one thread anyway).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Tests use tiny tensors: one thread is as fast, and immune to the other core being busy
# (OpenMP threads that wait on a loaded core slow tiny ops down by orders of magnitude).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def gpt():
    """A random gpt-tiny decoder (context 64), built once per test module."""
    from lmforge.config import ModelConfig
    from lmforge.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig.from_preset("gpt-tiny")).eval()
