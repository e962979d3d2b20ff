"""lmforge models in lm-evaluation-harness, and offline harness tasks from the bundled corpus.

    import lmforge.eval as ev
    results = ev.evaluate("runs/shakespeare-gpt/best", ["shakespeare"])   # the harness's results dict
    print(ev.format_results(results))

:class:`~lmforge.eval.lm.LMForgeLM` is the harness model ``lmforge`` (registered when this
package's ``lm`` module is imported, which :func:`evaluate` does); :mod:`lmforge.eval.tasks` holds
the shipped tasks. Needs the ``eval`` extra (lm-eval 0.4.x); without it every entry point raises
one :class:`~lmforge.errors.LMForgeError` naming the install command.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmforge.errors import ConfigError, DataError, LMForgeError
from lmforge.eval.tasks import SHIPPED_TASKS, TAG, TASK_DIR

INSTALL_HINT = 'pip install -e ".[eval]"'
HARNESS_MODELS = ("lmforge", "hf")


def require_lm_eval():
    """The ``lm_eval`` module, or a one-line error naming the install command."""
    try:
        import lm_eval
    except ImportError as e:
        raise LMForgeError(
            f"lmforge eval needs lm-evaluation-harness (the eval extra; {e}); install it with {INSTALL_HINT}"
        ) from None
    return lm_eval


def task_list(tasks: str | Sequence[str]) -> list[str]:
    """Task names from a comma-separated string or a list; refuses an empty one."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ConfigError(f"tasks: no task named; e.g. {TAG} (all shipped tasks) or {', '.join(SHIPPED_TASKS)}")
    return names


def task_manager(names: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None):
    """A harness TaskManager that knows the shipped tasks; it indexes the harness's own ~15k tasks
    (half a minute) only when a name asks for one, and refuses names it does not know."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    extra = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    paths = [str(TASK_DIR)] + [str(p) for p in extra]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if not set(names) <= set(manager.all_tasks):
        manager = TaskManager(include_path=paths, include_defaults=True)
    unknown = [n for n in names if n not in set(manager.all_tasks)]
    if unknown:
        raise ConfigError(
            f"tasks: no harness task named {', '.join(unknown)}; the shipped ones are "
            f"{', '.join(SHIPPED_TASKS)} (tag {TAG}); list the installed ones with lm-eval ls tasks"
        )
    return manager


def evaluate(
    model,
    tasks: str | Sequence[str],
    *,
    tokenizer=None,
    harness_model: str = "lmforge",
    model_args: dict | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    samples: dict[str, list[int]] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "fp32",
    log_samples: bool = False,
    seed: int = 0,
    include_path=None,
    bootstrap_iters: int = 100000,
) -> dict:
    """Run harness tasks on a model with ``lm_eval.simple_evaluate``; returns its results dict.

    ``model``: a model directory, or an lmforge model object (with ``tokenizer``).
    ``harness_model``: ``lmforge`` (this package's model), or ``hf`` to run lm-eval's own
    transformers model on an HF directory (``lmforge convert to-hf``) set up to read it the same
    way (:func:`~lmforge.eval.lm.hf_model_args`): the cross-check. ``model_args`` go to the
    harness model. ``limit``: the first documents of each task (a fraction when below 1); or
    ``samples``: the documents to run, by index, per task name.
    """
    lm_eval = require_lm_eval()
    names = task_list(tasks)
    manager = task_manager(names, include_path)
    from lmforge.eval.lm import LMForgeLM, hf_model_args

    extra = dict(model_args or {})
    if harness_model == "lmforge":
        if isinstance(model, (str, Path)):
            lm = LMForgeLM(pretrained=str(model), batch_size=batch_size, device=device, dtype=dtype, **extra)
        else:
            lm = LMForgeLM(model=model, tokenizer=tokenizer, batch_size=batch_size, **extra)
        lm_args = None
    elif harness_model == "hf":
        if not isinstance(model, (str, Path)):
            raise ConfigError("harness_model: hf reads an HF model directory; give its path")
        from lmforge.device import resolve_device

        lm = "hf"
        lm_args = {**hf_model_args(model), "batch_size": batch_size, "device": str(resolve_device(device)), **extra}
    else:
        raise ConfigError(f"harness_model: {harness_model!r} is not one of {', '.join(HARNESS_MODELS)}")
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            model_args=lm_args,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            samples=samples,
            task_manager=manager,
            log_samples=log_samples,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except ConnectionError as e:  # a harness task whose dataset is neither cached nor reachable
        raise DataError(
            f"tasks: {e}; that task's data is not on this machine (run it once with the network to fill "
            f"the datasets cache); the shipped tasks ({TAG}) need none"
        ) from None


def format_results(results: dict) -> str:
    """The harness's Markdown tables of a results dict (tasks, then groups when there are any)."""
    require_lm_eval()
    from lm_eval.utils import make_table

    out = make_table(results)
    if results.get("groups"):
        out += "\n" + make_table(results, "groups")
    return out


def write_results(results: dict, path: str | Path) -> Path:
    """The results dict as JSON (as the harness writes it: values it cannot encode as strings)."""
    import json

    require_lm_eval()
    from lm_eval.utils import handle_non_serializable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return path


def __getattr__(name: str):
    if name in ("LMForgeLM", "hf_model_args"):
        require_lm_eval()
        from lmforge.eval import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'lmforge.eval' has no attribute {name!r}")


__all__ = [
    "HARNESS_MODELS",
    "INSTALL_HINT",
    "LMForgeLM",
    "SHIPPED_TASKS",
    "TAG",
    "TASK_DIR",
    "evaluate",
    "format_results",
    "hf_model_args",
    "require_lm_eval",
    "task_list",
    "task_manager",
    "write_results",
]
