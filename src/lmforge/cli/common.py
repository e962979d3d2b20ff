"""What the CLI verbs share: dotted config overrides, model-config arguments, device flags and the
sampling flags of generation. Verbs import from here, never from each other (``main`` skips this
module when it discovers verbs)."""

from __future__ import annotations

from lmforge.config import MODEL_PRESETS, ModelConfig
from lmforge.errors import ConfigError
from lmforge.text import ERRORS


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """``["--model.n_layer", "6", "--train.lr=1e-3"]`` -> ``{"model.n_layer": "6", "train.lr": "1e-3"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --model.n_layer 6")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra) or (
                extra[i + 1].startswith("--") and "." in extra[i + 1][:40] and not _is_number(extra[i + 1])
            ):
                raise ConfigError(f"--{key}: missing value")
            value = extra[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def resolve_model_config(preset: str | None, config: str | None) -> ModelConfig:
    """The model config of ``--preset NAME`` or ``--config PATH`` (a config file, or a model, run or
    HF model directory: :func:`lmforge.modeldir.model_config`)."""
    from lmforge.modeldir import model_config

    if preset:
        return ModelConfig.from_preset(preset)
    return model_config(config)


def model_config_arg(spec: str) -> ModelConfig:
    """The model config of one argument that may be a preset name, a config file or a directory."""
    return resolve_model_config(spec if spec in MODEL_PRESETS else None, spec)


def add_encoding_errors_argument(p, what: str = "") -> None:
    """``--encoding-errors strict|replace``: what invalid UTF-8 in the input does."""
    p.add_argument(
        "--encoding-errors",
        choices=ERRORS,
        default="strict",
        help=f"invalid UTF-8{what}: fail (strict) or read it as U+FFFD (replace)",
    )


def add_device_arguments(p, dtype: bool = True) -> None:
    """``--device`` (and ``--dtype``) of the verbs that load a model for inference."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    if dtype:
        p.add_argument(
            "--dtype",
            default="fp32",
            help="fp32 (default) | bf16 | fp16 | int8 (int8 weights on the CPU, per-channel scales)",
        )


def add_sampling_arguments(p, max_new_tokens: int = 100) -> None:
    """The flags of :class:`~lmforge.infer.options.SamplingOptions` (read back by :func:`sampling_options`)."""
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=f"tokens to generate at most (default {max_new_tokens})",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (same as --temperature 0)")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set with probability >= p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens (HF)")
    p.add_argument("--seed", type=int, help="random seed of the sampler (default: nondeterministic)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (> 1: beam search)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = sum logprob / length ** this")
    p.add_argument("--batch-size", type=int, help="prompts per batch (default: all)")


def sampling_options(args):
    """The :class:`~lmforge.infer.options.SamplingOptions` of :func:`add_sampling_arguments`' flags,
    checked (a bad value is a ConfigError naming the option)."""
    from lmforge.infer.options import SamplingOptions

    return SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        batch_size=args.batch_size,
    )
