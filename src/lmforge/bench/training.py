"""Training-step cases: lmforge vs HF transformers at the same shape, with the same weights.

Both sides do a whole optimizer step (forward, loss, backward, AdamW) on the same batch. Each side
uses what its library gives a user by default on this device: lmforge its training setup
(``lmforge.train``'s optimizer: fused AdamW where the build has it); HF a plain ``torch.optim.AdamW``
as in an HF script. MFU counts the FLOPs the step needs: for BERT's MLM, the output head at the
masked positions only (lmforge computes just those; HF computes every position's logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.accounting import count_flops
from lmforge.bench.harness import CaseResult, run_case


@dataclass
class TrainShape:
    name: str
    family: str  # "gpt2" or "bert"
    n_layer: int
    d_model: int
    n_head: int
    seq_len: int
    vocab_size: int
    batch: int
    d_ff: int | None = None


SHAPES = {
    "gpt-tiny": TrainShape("train gpt-tiny (4x128, T64, B12)", "gpt2", 4, 128, 4, 64, 65, 12),
    "gpt-small": TrainShape("train small (6x384, T256, B8)", "gpt2", 6, 384, 6, 256, 8192, 8),
    "bert-mlm": TrainShape("train BERT MLM (6x384, T128, B16)", "bert", 6, 384, 6, 128, 8192, 16, 1536),
    "smoke": TrainShape("train smoke (1x32, T16, B2)", "gpt2", 1, 32, 2, 16, 64, 2),
    # a GPU-sized shape (GPT-2 124M): 35 s a step on a 2-core CPU, so only run by default on CUDA
    "gpt2-124m": TrainShape("train GPT-2 124M (12x768, T1024, B8)", "gpt2", 12, 768, 12, 1024, 50257, 8),
}


def _hf_model(s: TrainShape):
    import transformers as T

    if s.family == "gpt2":
        cfg = T.GPT2Config(
            n_layer=s.n_layer,
            n_embd=s.d_model,
            n_head=s.n_head,
            n_positions=s.seq_len,
            vocab_size=s.vocab_size,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return T.GPT2LMHeadModel(cfg)
    cfg = T.BertConfig(
        num_hidden_layers=s.n_layer,
        hidden_size=s.d_model,
        num_attention_heads=s.n_head,
        intermediate_size=s.d_ff,
        max_position_embeddings=s.seq_len,
        vocab_size=s.vocab_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return T.BertForMaskedLM(cfg)


def _batch(s: TrainShape, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, s.vocab_size, (s.batch, s.seq_len + 1), generator=g)
    if s.family == "gpt2":  # the same T-1 targets HF's internal shift uses, so the losses agree
        ids = x[:, :-1].contiguous()
        return {"input_ids": ids, "next": torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)}
    ids = x[:, :-1].contiguous()
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels}


def train_case(
    key: str,
    rounds: int = 5,
    peak: float | None = None,
    compile: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CaseResult:
    """Both sides keep fp32 weights and run under the same autocast ``dtype`` (bf16 on CUDA)."""
    from lmforge import device as dev
    from lmforge.interop import from_hf
    from lmforge.train.optim import param_groups  # the engine's own optimizer groups

    s = SHAPES[key]
    device = torch.device(device)
    dev.configure_backends(device)
    torch.manual_seed(0)
    hf = _hf_model(s).train()
    ours = from_hf(hf).train().to(device)
    hf = hf.to(device)
    b = {k: v.to(device) for k, v in _batch(s).items()}
    opt_ours = torch.optim.AdamW(param_groups(ours, 0.1), lr=1e-4, fused=dev.fused_adamw_ok(device))
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.1)
    fwd = torch.compile(ours) if compile else ours
    labels = b["next"] if s.family == "gpt2" else b["labels"]
    hf_labels = b["input_ids"] if s.family == "gpt2" else b["labels"]  # HF's GPT-2 shifts inside

    def ours_loss():
        with dev.autocast(device, dtype):
            return fwd(b["input_ids"], labels=labels).loss

    def hf_loss():
        with dev.autocast(device, dtype):
            return hf(input_ids=b["input_ids"], labels=hf_labels).loss

    def step(loss_fn, opt):
        def run():
            loss_fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    with torch.no_grad():  # same weights, same loss before any step
        diff = abs(ours_loss().item() - hf_loss().item())
    # the MLM head's FLOPs count at the masked positions only: the work an MLM needs
    masked = float((b["labels"] != -100).float().mean()) if s.family == "bert" else 1.0
    flops = count_flops(ours.config, s.seq_len, mlm_fraction=masked).training_per_token
    name = s.name + (" compiled" if compile else "")
    return run_case(
        name,
        "tokens",
        s.batch * s.seq_len,
        step(ours_loss, opt_ours),
        step(hf_loss, opt_hf),
        rounds=rounds,
        warmup=3 if compile else 1,
        flops_per_unit=flops,
        peak=peak,
        check=f"|dloss| {diff:.1e}",
    )
