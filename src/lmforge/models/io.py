"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``).

Written under a temporary name and renamed when whole, so a directory that exists is complete.
Loading checks every tensor name and shape against the config before touching the model and
refuses a mismatch with a message: never a silently half-loaded model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (under their first name), as safetensors requires."""
    seen: set[tuple] = set()
    out = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


# What an atomic write leaves if it is killed: ".NAME.tmp-XXXX" (the half-written copy) and
# ".NAME.old-PID" (the replaced one, between the two renames). remove_temporaries knows both.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]+$")
_OPEN: set[Path] = set()  # temporary directories that an atomic_directory call is filling now


def is_temporary(name: str) -> bool:
    return _TEMPORARY.match(name) is not None


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Remove what killed atomic writes left in ``directory``; a replaced directory whose
    replacement never arrived (killed between the two renames) is put back instead."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        m = _TEMPORARY.match(p.name)
        if m is None or p.resolve() in _OPEN:
            continue
        final = p.with_name(m["name"])
        if m["kind"] == "old" and not final.exists():
            os.replace(p, final)
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file under a temporary name and rename it when whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_directory(final: Path, write, overwrite: bool = True) -> Path:
    """Call ``write(tmp_dir)`` then rename ``tmp_dir`` to ``final`` (replacing it if allowed).

    Inside another atomic write (a model directory that is the checkpoint's temporary directory)
    ``write`` fills ``final`` directly: the outer rename already makes it appear whole, and a
    second temporary level would be debris that no clean-up knows of."""
    final = Path(final)
    if final.resolve() in _OPEN:
        write(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise CheckpointError(f"{final}: already exists; pass overwrite=True to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    _OPEN.add(tmp.resolve())
    try:
        write(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _OPEN.discard(tmp.resolve())
    return final


def save_model(model: nn.Module, directory: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write a model directory. ``extra`` is merged into config.json under ``"lmforge"``
    (e.g. task labels of a fine-tuned model)."""
    cfg: ModelConfig = model.config

    def write(tmp: Path) -> None:
        d = {**cfg.to_dict()}
        if extra:
            d["lmforge"] = extra
        (tmp / CONFIG_FILE).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
        save_file(unique_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)

    return atomic_directory(Path(directory), write)


def read_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """The model config of a directory and its extra ``"lmforge"`` section."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a model directory (not found)")
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; is this an lmforge model directory?")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt config ({e})") from None
    extra = d.pop("lmforge", {}) or {}
    try:
        return ModelConfig.from_dict(d), extra
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` after checking names and shapes; tied aliases may be absent."""
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all); "
            f"the weights do not belong to this architecture"
        )
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(t.shape)}, the config expects {tuple(expected[name].shape)}"
            )
    stored = {(t.untyped_storage().data_ptr(), t.storage_offset()) for n, t in expected.items() if n in state}
    missing = [
        n
        for n, t in expected.items()
        if n not in state and (t.untyped_storage().data_ptr(), t.storage_offset()) not in stored
    ]
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} in all)")
    with torch.no_grad():
        for name, t in state.items():
            expected[name].copy_(t)


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    with_extra: bool = False,
):
    """Build the model described by ``config.json`` and fill it from ``model.safetensors``.

    The weights only: :func:`lmforge.load_model` (:mod:`lmforge.modeldir`, a floor above the
    tokenizer) also checks that a ``tokenizer.json`` beside them fits the embedding.
    """
    from lmforge.models import build_model

    directory = Path(directory)
    cfg, extra = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or truncated weights ({e})") from None
    model = build_model(cfg)
    load_state_into(model, state, str(weights))
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    model.eval()
    return (model, extra) if with_extra else model
