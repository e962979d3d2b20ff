"""Training checkpoints: ``checkpoints/step-N/`` = a model directory + ``state.pt`` + ``manifest.json``.

* The model directory (``config.json``, ``model.safetensors``, ``tokenizer.json``) loads with
  :func:`lmforge.load_model` like any other.
* ``state.pt`` holds everything else a resumed run needs - optimizer, grad scaler, RNG states of
  every rank, the batch sampler's position, the step and trainer counters - as tensors and
  plain containers only, so it loads with ``torch.load(..., weights_only=True)``.
* ``manifest.json``, written last, lists every file with its size and SHA-256. The directory is
  written under a temporary name and renamed when whole (a killed writer leaves only a
  ``.step-N.tmp-*`` directory, ignored and cleaned up; the model files go straight into it); the manifest also catches files damaged
  after the fact (a truncated copy, a full disk), and :func:`latest_valid` then falls back to the
  previous good checkpoint and says which one was skipped and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import CheckpointError
from lmforge.models.io import atomic_directory, remove_temporaries

STATE_FILE, MANIFEST_FILE = "state.pt", "manifest.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")

# Fault injection for tests: SIGKILL this process while a checkpoint of the given step is half written.
KILL_DURING_CHECKPOINT_ENV = "LMFORGE_KILL_DURING_CHECKPOINT"


# ----------------------------------------------------------------------------------------------
# Writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(directory.iterdir())
        if f.is_file() and f.name != MANIFEST_FILE
    }
    (directory / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")


def save_checkpoint(directory: str | Path, write_model: Callable[[Path], None], state: dict[str, Any]) -> Path:
    """Write a checkpoint directory atomically: model files, then ``state.pt``, then the manifest."""
    directory = Path(directory)
    step = state.get("step")

    def write(tmp: Path) -> None:
        write_model(tmp)
        torch.save(state, tmp / STATE_FILE)
        if os.environ.get(KILL_DURING_CHECKPOINT_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die with the checkpoint half written
        write_manifest(tmp)

    return atomic_directory(directory, write)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the finished checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, and leftovers of interrupted writes."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    remove_partial(run_dir)


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Remove what killed writers left in a run directory and its checkpoints (``.step-N.tmp-*``,
    ``.best.tmp-*``, ``.metrics.jsonl.tmp-*``, ...: every temporary name an atomic write makes)."""
    return [*remove_temporaries(Path(run_dir) / CHECKPOINTS), *remove_temporaries(run_dir)]


def read_metrics(path: str | Path, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], bool]:
    """The records of a ``metrics.jsonl`` and whether its last line was torn (a crash while it was
    written leaves half a line): that line is dropped with a warning; damage elsewhere is an error."""
    path = Path(path)
    lines = [
        (i, line)
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if line.strip()
    ]
    records, torn = [], False
    for k, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif k == len(lines) - 1:
            torn = True
            log(f"warning: {path}: the last line is torn (the run was killed while writing it); dropped it")
        else:
            raise CheckpointError(f"{path}:{number}: not a JSON record; the metrics log is damaged")
    return records, torn


# ----------------------------------------------------------------------------------------------
# Checking and reading


def verify_checkpoint(directory: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first missing, truncated or altered file."""
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST_FILE} (the checkpoint was not finished)")
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest}: corrupt manifest ({e})") from None
    if STATE_FILE not in files:
        raise CheckpointError(f"{directory}: the manifest lists no {STATE_FILE}")
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {want['bytes']} (truncated?)")
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch (the file was altered or damaged)")


def latest_valid(run_dir: str | Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that passes :func:`verify_checkpoint`; each bad one is named in the log."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            log(f"warning: skipping corrupt checkpoint: {e}; falling back to the previous one")
    return None


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------------
# RNG states as tensors and plain containers (weights_only-loadable)


def rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_safe(obj: Any) -> Any:
    """Numpy values inside a (sampler) state -> tensors / Python numbers, marked so :func:`from_safe`
    restores them; ``weights_only`` loading accepts only tensors and plain containers."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(obj.copy()), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_safe(v) for v in obj)
    return obj
