"""The weight tables of the HF families: per family a list of rules ``(lmforge name, [HF names], op,
sizes)``, and the ops that turn HF tensors into lmforge's and back (:mod:`lmforge.interop.hf`
applies a table in either direction)."""

from __future__ import annotations

import torch

from lmforge.config import ModelConfig
from lmforge.interop import hf_xlnet

# ----------------------------------------------------------------------------------------------
# Weight rules. op: "copy"; "T" (GPT-2's Conv1D stores weights transposed); "cat" (several HF
# tensors concatenated along dim 0, e.g. q/k/v -> qkv); "offset2" (BART's learned positions keep
# two unused rows in front); "row" (BART's final_logits_bias is (1, V)); "heads_in" / "heads_out"
# (XLNet's (C, H, D) projections: the weight is (H*D, C) = reshape(C, H*D).T, or (C, H*D)).


def load_op(op: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    if op == "T":
        return tensors[0].t()
    if op == "cat":
        return torch.cat(tensors, dim=0)
    if op == "offset2":
        return tensors[0][2:]
    if op == "row":
        return tensors[0].reshape(-1)
    if op == "heads_in":
        return tensors[0].flatten(1).t()
    if op == "heads_out":
        return tensors[0].flatten(1)
    return tensors[0]


def save_op(op: str, t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    if op == "T":
        return [t.t()]
    if op == "cat":
        return list(t.split(sizes, dim=0))
    if op == "offset2":
        return [torch.cat([t.new_zeros(2, t.shape[1]), t])]
    if op == "row":
        return [t.reshape(1, -1)]
    if op == "heads_in":
        return [t.t().reshape(-1, *sizes)]
    if op == "heads_out":
        return [t.reshape(-1, *sizes)]
    return [t]


Rule = tuple[str, list[str], str, list[int]]


def _linear(
    ours: str, hf: str | list[str], sizes: list[int] | None = None, bias: bool = True, op: str = "copy"
) -> list[Rule]:
    """Rules for a linear layer (weight, and bias when present); several HF names -> concatenated."""
    names = [hf] if isinstance(hf, str) else hf
    multi = "cat" if len(names) > 1 else op
    rules = [(f"{ours}.weight", [f"{n}.weight" for n in names], multi, sizes or [])]
    if bias:
        rules.append((f"{ours}.bias", [f"{n}.bias" for n in names], "cat" if len(names) > 1 else "copy", sizes or []))
    return rules


def _norm(ours: str, hf: str, bias: bool = True) -> list[Rule]:
    return _linear(ours, hf, bias=bias)


def _qkv_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    r: list[Rule] = [
        ("transformer.tok_emb.weight", ["transformer.wte.weight"], "copy", []),
        ("transformer.pos_emb.weight", ["transformer.wpe.weight"], "copy", []),
    ]
    for i in range(cfg.n_layer):
        o, h = f"transformer.blocks.{i}", f"transformer.h.{i}"
        r += _norm(f"{o}.norm1", f"{h}.ln_1") + _norm(f"{o}.norm2", f"{h}.ln_2")
        r += _linear(f"{o}.attn.qkv", f"{h}.attn.c_attn", op="T") + _linear(
            f"{o}.attn.proj", f"{h}.attn.c_proj", op="T"
        )
        r += _linear(f"{o}.mlp.fc", f"{h}.mlp.c_fc", op="T") + _linear(f"{o}.mlp.proj", f"{h}.mlp.c_proj", op="T")
    r += _norm("transformer.norm_f", "transformer.ln_f")
    if not cfg.tie_embeddings:
        r.append(("lm_head.weight", ["lm_head.weight"], "copy", []))
    return r


def _llama_rules(cfg: ModelConfig) -> list[Rule]:
    r: list[Rule] = [("transformer.tok_emb.weight", ["model.embed_tokens.weight"], "copy", [])]
    for i in range(cfg.n_layer):
        o, h = f"transformer.blocks.{i}", f"model.layers.{i}"
        r += _norm(f"{o}.norm1", f"{h}.input_layernorm", bias=False)
        r += _norm(f"{o}.norm2", f"{h}.post_attention_layernorm", bias=False)
        r += _linear(f"{o}.attn.qkv", [f"{h}.self_attn.{p}_proj" for p in "qkv"], _qkv_sizes(cfg), cfg.bias)
        r += _linear(f"{o}.attn.proj", f"{h}.self_attn.o_proj", bias=cfg.bias)
        r += _linear(f"{o}.mlp.fc", [f"{h}.mlp.gate_proj", f"{h}.mlp.up_proj"], [cfg.ffn_dim] * 2, cfg.bias)
        r += _linear(f"{o}.mlp.proj", f"{h}.mlp.down_proj", bias=cfg.bias)
    r += _norm("transformer.norm_f", "model.norm", bias=False)
    if not cfg.tie_embeddings:
        r.append(("lm_head.weight", ["lm_head.weight"], "copy", []))
    return r


def _bert_rules(cfg: ModelConfig, prefix: str = "bert.") -> list[Rule]:
    e, p = "encoder", prefix
    r: list[Rule] = [
        (f"{e}.tok_emb.weight", [f"{p}embeddings.word_embeddings.weight"], "copy", []),
        (f"{e}.pos_emb.weight", [f"{p}embeddings.position_embeddings.weight"], "copy", []),
        (f"{e}.type_emb.weight", [f"{p}embeddings.token_type_embeddings.weight"], "copy", []),
    ]
    r += _norm(f"{e}.emb_norm", f"{p}embeddings.LayerNorm")
    for i in range(cfg.n_layer):
        o, h = f"{e}.blocks.{i}", f"{p}encoder.layer.{i}"
        r += _linear(f"{o}.attn.qkv", [f"{h}.attention.self.{n}" for n in ("query", "key", "value")], _qkv_sizes(cfg))
        r += _linear(f"{o}.attn.proj", f"{h}.attention.output.dense")
        r += _norm(f"{o}.norm1", f"{h}.attention.output.LayerNorm")
        r += _linear(f"{o}.mlp.fc", f"{h}.intermediate.dense") + _linear(f"{o}.mlp.proj", f"{h}.output.dense")
        r += _norm(f"{o}.norm2", f"{h}.output.LayerNorm")
    if cfg.has_pooler:
        r += _linear("pooler.dense", f"{p}pooler.dense")
    if cfg.mlm_head:
        r += _linear("mlm.dense", "cls.predictions.transform.dense")
        r += _norm("mlm.norm", "cls.predictions.transform.LayerNorm")
        r.append(("mlm.decoder.bias", ["cls.predictions.bias"], "copy", []))
        if not cfg.tie_embeddings:
            r.append(("mlm.decoder.weight", ["cls.predictions.decoder.weight"], "copy", []))
    if cfg.nsp_head:
        r += _linear("nsp", "cls.seq_relationship")
    return r


def _seq2seq_rules(cfg: ModelConfig, bart: bool) -> list[Rule]:
    # HF's encoder and decoder read their own embed_tokens (tied to model.shared unless
    # tie_word_embeddings=False); the import fills the ones a checkpoint leaves out (_fill_tied).
    r: list[Rule] = [
        ("shared.weight", ["model.encoder.embed_tokens.weight"], "copy", []),
        ("lm_head.bias", ["final_logits_bias"], "row", []),
    ]
    if not cfg.share_embeddings:
        r.append(("decoder.tok_emb.weight", ["model.decoder.embed_tokens.weight"], "copy", []))
    if not cfg.tie_embeddings:
        r.append(("lm_head.weight", ["lm_head.weight"], "copy", []))
    for side, n_layer in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        h0 = f"model.{side}"
        if bart:
            r.append((f"{side}.pos_emb.weight", [f"{h0}.embed_positions.weight"], "offset2", []))
            r += _norm(f"{side}.emb_norm", f"{h0}.layernorm_embedding")
        for i in range(n_layer):
            o, h = f"{side}.blocks.{i}", f"{h0}.layers.{i}"
            r += _linear(f"{o}.attn.qkv", [f"{h}.self_attn.{n}_proj" for n in "qkv"], _qkv_sizes(cfg))
            r += _linear(f"{o}.attn.proj", f"{h}.self_attn.out_proj")
            r += _norm(f"{o}.norm1", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                r += _linear(f"{o}.cross_attn.q", f"{h}.encoder_attn.q_proj")
                r += _linear(
                    f"{o}.cross_attn.kv",
                    [f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"],
                    [cfg.d_model, cfg.d_model],
                )
                r += _linear(f"{o}.cross_attn.proj", f"{h}.encoder_attn.out_proj")
                r += _norm(f"{o}.norm_cross", f"{h}.encoder_attn_layer_norm")
            r += _linear(f"{o}.mlp.fc", f"{h}.fc1") + _linear(f"{o}.mlp.proj", f"{h}.fc2")
            r += _norm(f"{o}.norm2", f"{h}.final_layer_norm")
    return r


def weight_rules(cfg: ModelConfig, family: str, prefix: str = "bert.") -> list[Rule]:
    if family == "gpt2":
        return _gpt2_rules(cfg)
    if family == "llama":
        return _llama_rules(cfg)
    if family == "bert":
        return _bert_rules(cfg, prefix)
    if family == "xlnet":
        return hf_xlnet.xlnet_rules(cfg)
    return _seq2seq_rules(cfg, bart=family == "bart")
