"""Numeric fields of every config: finite, the right sign, whole where it counts; one ConfigError
naming the field, from Python and from the command line (before anything is loaded or printed)."""

import pytest
import torch

from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.finetune import FinetuneConfig
from lmforge.finetune.lora import LoRAConfig
from lmforge.infer.options import SamplingOptions
from lmforge.train import RunConfig
from lmforge.train.config import DataConfig, TrainConfig


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "field, value",
    [
        ("train.lr", "nan"),
        ("train.lr", "inf"),
        ("train.weight_decay", "nan"),
        ("model.norm_eps", "nan"),
        ("train.grad_clip", "nan"),
        ("model.n_layer", "1.5"),
        ("train.warmup_steps", "2.7"),
        ("train.eps", "0"),
        ("train.seed", "-1"),
        ("train.sample_temperature", "-1"),
        ("train.threads", "1e9"),
        ("data.sentinels", "-3"),
        ("model.init_std", "-inf"),
        ("model.d_model", "1e400"),
        ("model.n_head", ""),
        ("train.max_steps", "1e30"),
        ("data.seq_len", "abc"),
    ],
)
def test_train_refuses_bad_numbers_naming_the_field(field, value, capsys):
    """Each of these reached torch (a traceback at the first step) or trained a different model."""
    assert main(["train", "--preset", "tiny-gpt", f"--{field}", value, "--print-config"]) == 2
    one_line_error(capsys, f"error: {field}:")


def test_whole_numbers_in_any_spelling_are_accepted():
    cfg = RunConfig.from_preset("tiny-gpt").override(
        {"model.n_layer": "3.0", "train.max_steps": "1e3", "train.warmup_steps": " 7 "}
    )
    assert (cfg.model.n_layer, cfg.train.max_steps, cfg.train.warmup_steps) == (3, 1000, 7)
    assert isinstance(cfg.train.max_steps, int)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: ModelConfig(n_layer=1.5), "n_layer"),
        (lambda: ModelConfig(norm_eps=float("nan")), "norm_eps"),
        (lambda: ModelConfig(rope_base=float("inf")), "rope_base"),
        (lambda: TrainConfig(warmup_steps=2.7), "train.warmup_steps"),
        (lambda: TrainConfig(grad_clip=float("nan")), "train.grad_clip"),
        (lambda: TrainConfig(beta1=float("nan")), "train.beta1"),
        (lambda: DataConfig(mlm_probability=float("nan")), "data.mlm_probability"),
        (lambda: DataConfig(seq_len=True), "data.seq_len"),
        (lambda: LoRAConfig(rank=2.5), "lora.rank"),
        (lambda: LoRAConfig(alpha=float("inf")), "lora.alpha"),
        (lambda: FinetuneConfig(patience=-1), "patience"),
        (lambda: FinetuneConfig(max_len=float("nan")), "max_len"),
        (lambda: SamplingOptions(temperature=-1), "temperature"),
        (lambda: SamplingOptions(top_k=-3), "top_k"),
        (lambda: SamplingOptions(top_p=float("nan")), "top_p"),
        (lambda: SamplingOptions(max_new_tokens=2.5), "max_new_tokens"),
        (lambda: SamplingOptions(seed=-1), "seed"),
    ],
)
def test_python_construction_is_checked_too(make, field):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)


def test_nested_fields_are_named_with_their_section():
    with pytest.raises(ConfigError, match=r"^model\.n_layer: must be positive"):
        RunConfig.from_preset("tiny-gpt").override({"model.n_layer": "0"})
    with pytest.raises(ConfigError, match=r"^lora\.rank:"):
        FinetuneConfig().override({"lora.rank": "-2"})
    with pytest.raises(ConfigError, match=r"^train\.lr:"):
        FinetuneConfig().override({"train.lr": "nan"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lmforge.models import build_model, save_model
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer("char", ["the quick brown fox jumps over the lazy dog"])
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=64, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    return save_model(build_model(cfg).eval(), tmp_path_factory.mktemp("m") / "gpt", tokenizer=tok)


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-k", "-3"], "top_k"),
        (["--top-p", "1.5"], "top_p"),
        (["--temperature", "nan"], "temperature"),
        (["--repetition-penalty", "0"], "repetition_penalty"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--num-beams", "100000"], "num_beams"),
        (["--batch-size", "0"], "batch_size"),
        (["--max-new-tokens", "1000"], "max_positions"),
    ],
)
def test_generate_validates_before_printing(model_dir, flags, field, capsys):
    """The prompt used to be printed before the error (and -1 was silently greedy, -3 no filter)."""
    assert main(["generate", str(model_dir), "--prompt", "the fox", *flags]) == 2
    assert capsys.readouterr().out == ""  # not even the prompt
    assert main(["generate", str(model_dir), "--prompt", "the fox", *flags]) == 2
    one_line_error(capsys, field)


def test_generate_still_streams_the_prompt_first(model_dir, capsys):
    assert main(["generate", str(model_dir), "--prompt", "the fox", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("the fox")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["plan", "--flops", "abc"], "invalid float value"),  # was the whole usage block
        (["generate", "m", "--top-k", "1.5"], "invalid int value"),
        (["no-such-verb"], "invalid choice"),
    ],
)
def test_argparse_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    one_line_error(capsys, needle)
