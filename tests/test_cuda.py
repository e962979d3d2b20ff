"""The CUDA path, on a machine with a GPU (skipped, not passed, elsewhere): parity with HF on the
GPU in fp32 and under bf16 autocast, a bf16 training step with fused AdamW and the flash kernel,
greedy generation and scoring equal to HF, exact resume, torch.compile, the out-of-memory message,
and the refusal of more torchrun ranks than GPUs (NCCL needs a GPU per rank; DDP and FSDP2 against
one process are tested on the CPU, in test_train_cli).

``benchmarks/cuda_check.sh`` runs this file with the benchmark on a GPU machine."""

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
transformers = pytest.importorskip("transformers")

from lmforge.errors import TrainingError  # noqa: E402
from lmforge.interop import from_hf  # noqa: E402
from lmforge.train import Trainer  # noqa: E402
from lmforge.train import checkpoint as ckpt  # noqa: E402
from test_hf_parity import CASES, _batch, _outputs  # noqa: E402
from test_train_engine import TOKENS, Fixed, Windows, _cfg, _gpt, _run  # noqa: E402

CUDA = torch.device("cuda")
needs_bf16 = pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(),
    reason="needs a GPU with bf16 (compute capability 8.0+)",
)


@pytest.fixture
def exact_fp32():
    """fp32 matmuls without TF32 (which lmforge turns on for training): parity at 1e-4."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _family_outputs(family, autocast):
    cls, config_cls, cfgs = CASES[family]
    torch.manual_seed(0)
    hf = cls(config_cls(**cfgs[-1])).eval()
    ours = from_hf(hf).to(CUDA)
    hf = hf.to(CUDA)
    x, mask = _batch(ours.config.vocab_size)
    tt = torch.zeros_like(x)
    tt[:, 5:] = 1
    y, ymask = _batch(ours.config.vocab_size, T=9, lengths=(9, 6, 2))
    args = [t.to(CUDA) for t in (x, mask, tt, y, ymask)]
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        ref = _outputs(hf, family, *args, ours=False)
        got = _outputs(ours, family, *args, ours=True)
    return [(a.float(), b.float(), m.to(CUDA)) for (a, m), (b, _) in zip(ref, got)]


def _masked_max(d, m):
    return (d.abs() * m[..., None]).max().item()


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "bart"])
def test_parity_with_hf_on_the_gpu(family, exact_fp32):
    for a, b, m in _family_outputs(family, autocast=False):
        assert _masked_max(a - b, m) <= 1e-4


@needs_bf16
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "bart"])
def test_bf16_autocast_error_is_hfs_own(family, exact_fp32):
    """Under bf16 autocast both libraries round; lmforge's distance from the fp32 outputs is no
    larger than HF's own (within a factor of 2, plus bf16's resolution)."""
    for (a32, b32, m), (a16, b16, _) in zip(_family_outputs(family, False), _family_outputs(family, True)):
        ours_err, hf_err = _masked_max(b16 - b32, m), _masked_max(a16 - a32, m)
        assert ours_err <= 2 * hf_err + 2e-2, (ours_err, hf_err)


@needs_bf16
def test_bf16_training_uses_fused_adamw_and_fp32_weights():
    batch = Windows(TOKENS, 8, 32).next_batch()
    t = Trainer(_gpt(), _cfg(max_steps=40, lr=3e-3, device="cuda"), Fixed(batch))
    assert t.device.type == "cuda" and t.dtype == torch.bfloat16
    assert t.optimizer.defaults["fused"]
    first = t.train_step().loss
    for _ in range(39):
        last = t.train_step().loss
    assert all(p.dtype == torch.float32 and p.is_cuda for p in t.model.parameters())
    assert last < 0.5 * first  # memorises the batch


@needs_bf16  # the flash kernel needs compute capability 8.0+ as well
def test_causal_attention_runs_on_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _gpt().to(CUDA)
    x = torch.randint(0, 256, (4, 32), device=CUDA)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", torch.bfloat16):
        out = model(x, labels=x)  # raises if the flash kernel cannot take these arguments
        out.loss.backward()
    assert torch.isfinite(out.loss)


def _gpt2_pair():
    from lmforge.bench.inference import models

    pair = models(device=CUDA)  # turns TF32 on, as for training: off again for exact fp32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return pair


def test_greedy_generation_equals_hf_and_the_uncached_loop(exact_fp32):
    from lmforge.infer import generate_ids

    ours, hf = _gpt2_pair()
    ids = torch.randint(0, 8192, (4, 16), device=CUDA)
    got = generate_ids(ours, ids, max_new_tokens=48, do_sample=False, eos_id=None).tokens
    with torch.inference_mode():
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=48,
            min_new_tokens=48,
            do_sample=False,
            pad_token_id=0,
        )[:, 16:]
        assert torch.equal(got, ref)
        seq = ids  # no KV cache: the whole prefix again at every step
        for _ in range(16):
            seq = torch.cat([seq, ours(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(seq[:, 16:], got[:, :16])
    a = generate_ids(ours, ids, max_new_tokens=16, do_sample=True, seed=7).tokens
    assert torch.equal(a, generate_ids(ours, ids, max_new_tokens=16, do_sample=True, seed=7).tokens)


def test_scoring_equals_hf(exact_fp32):
    from lmforge.infer import decoder_token_logprobs

    ours, hf = _gpt2_pair()
    ids = torch.randint(0, 8192, (8, 128), device=CUDA)
    got = torch.stack(decoder_token_logprobs(ours, ids, batch_size=8))
    with torch.inference_mode():
        ref = hf(ids).logits.log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    assert (got - ref.cpu()).abs().max().item() <= 1e-4


def test_resume_is_bit_exact_on_the_gpu(tmp_path):
    _, full = _run(tmp_path / "a", 8, device="cuda")
    _run(tmp_path / "b", 8, stop_at=5, device="cuda")
    _, resumed = _run(tmp_path / "b", 8, resume_from=ckpt.latest_valid(tmp_path / "b"), device="cuda")
    assert full == resumed


def test_compiled_training_follows_eager():
    batch = Windows(TOKENS, 8, 32).next_batch()
    losses = {}
    for compiled in (False, True):
        t = Trainer(_gpt(), _cfg(max_steps=5, device="cuda", compile=compiled), Fixed(batch))
        losses[compiled] = [t.train_step().loss for _ in range(5)]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)


def test_out_of_memory_is_a_one_line_error():
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 256 * 2**20) / total))
    try:
        model = _gpt(vocab_size=32768)
        x = torch.randint(0, 32768, (1024, 33))
        batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}  # logits alone: 1024 x 32 x 32768 x 2 bytes = 2 GiB
        t = Trainer(model, _cfg(max_steps=1, device="cuda"), Fixed(batch))
        with pytest.raises(TrainingError, match=r"^CUDA out of memory at step 1 with micro-batches of 1024 x 32"):
            t.fit()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_two_ranks_on_one_gpu_is_a_one_line_error(tmp_path):
    if torch.cuda.device_count() > 1:
        pytest.skip("the machine has a GPU per rank")
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lmforge",
            "train",
            "--preset",
            "tiny-gpt",
            "--data.path",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rc.returncode != 0
    assert "processes on this node but it has 1 GPU(s)" in rc.stderr + rc.stdout
