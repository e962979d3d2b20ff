"""``lmforge convert``: HuggingFace transformers checkpoints to and from lmforge model directories."""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import CheckpointError
from lmforge.interop.hf import from_hf, packaged_model_dir, to_hf
from lmforge.modeldir import load, model_dir
from lmforge.models import count_parameters, save_model

COMMAND = "convert"
HELP = "convert between HF transformers model directories and lmforge model directories"


def add_arguments(p) -> None:
    p.add_argument("direction", choices=["from-hf", "to-hf"])
    p.add_argument(
        "source",
        help="model or run directory to read (for from-hf: an HF directory or 'minilm', the packaged all-MiniLM-L6-v2)",
    )
    p.add_argument("out", help="directory to write")


def _copy_tokenizer(src: Path, model_dir: Path) -> None:
    tok = src / "tokenizer.json"
    if tok.is_file():
        (model_dir / "tokenizer.json").write_bytes(tok.read_bytes())


def run(args) -> None:
    src = packaged_model_dir() if args.source == "minilm" else Path(args.source)
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such model directory")
    if args.direction == "from-hf":
        model = from_hf(src)
        out = save_model(model, args.out)
    else:
        src = model_dir(src)  # a run directory's best/
        model, _ = load(src, need_tokenizer=False)
        out = to_hf(model, args.out)
    _copy_tokenizer(src, out)
    print(f"wrote {out} ({model.config.arch}, {count_parameters(model):,} parameters)")
