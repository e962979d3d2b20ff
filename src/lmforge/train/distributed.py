"""Everything wrapped around a plain model from outside: the job's runtime (threads, device,
process group), DDP / FSDP2, activation checkpointing and ``torch.compile``; plus the few
collectives the engine needs.

The model files never import this module: a model stays a plain ``nn.Module`` and is wrapped
here, so the same model trains on one CPU core or under ``torchrun`` on many GPUs.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge import device as dev
from lmforge.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (RANK / WORLD_SIZE set): NCCL on GPUs,
    gloo on the CPU. A plain ``python`` launch is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and local_world > torch.cuda.device_count():  # NCCL needs a GPU per rank
        raise ConfigError(
            f"torchrun started {local_world} processes on this node but it has "
            f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node {torch.cuda.device_count()}, "
            "or --train.device cpu to run the ranks on the CPU"
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return info


@dataclass(frozen=True)
class Runtime:
    """Where a training job runs: its device, the compute dtype, its place in the process group."""

    device: torch.device
    dtype: torch.dtype
    dist: DistInfo


def setup_runtime(cfg) -> Runtime:
    """Set a job up once, from its :class:`~lmforge.train.config.TrainConfig`: CPU threads
    (``cfg.threads``), the device and dtype, the device's fast kernels and the process group."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dev.resolve_device(cfg.device)
    dtype = dev.resolve_dtype(cfg.dtype, device)
    dev.configure_backends(device)
    return Runtime(device, dtype, setup(device))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Collectives (no-ops in a world of one)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj, src: int = 0):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Wrapping the model


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated residual blocks: lmforge's ``Block`` modules, else the members of any
    ``nn.ModuleList`` named ``blocks`` / ``layers`` / ``h`` (other models)."""
    from lmforge.nn import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        for name, m in model.named_modules():
            if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("blocks", "layers", "h"):
                blocks.extend(m)
    return blocks


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each block's activations in backward instead of storing them (memory for time).

    Patches each block instance's ``forward`` (the class is untouched); returns the block count.
    """
    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError("train.activation_checkpointing: found no transformer blocks to checkpoint in this model")
    for block in blocks:
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # evaluation / generation: nothing to save memory on
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
    return len(blocks)


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    device: torch.device,
    strategy: str = "ddp",
    compile: bool = False,
    activation_checkpointing: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """The module to train with: ``model`` checkpointed, compiled and distributed as asked.

    With FSDP2 the model's parameters become shards in place (``model`` itself is the sharded
    module); with DDP the returned wrapper holds ``model`` and averages its gradients.
    """
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if info.enabled and strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard

        from torch.distributed.device_mesh import init_device_mesh

        # the mesh on the training device: left to itself FSDP2 takes the accelerator whenever one
        # is present, also for ranks that train on the CPU
        mesh = init_device_mesh(device.type, (info.world_size,))
        for block in transformer_blocks(model):  # one all-gather per block, then the rest at the root
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    train_model = torch.compile(model) if compile else model
    if info.enabled and strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(
            train_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    return train_model


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-step of an accumulated batch."""
    if enabled:
        yield
    elif hasattr(train_model, "no_sync"):  # DDP
        with train_model.no_sync():
            yield
    elif hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)
    else:
        yield


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` was sharded with FSDP2 (its parameters are DTensors)."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state on the CPU (gathered from shards under FSDP; a collective there)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state with whole (unsharded) tensors; a collective under FSDP."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict, optim_state: dict | None
) -> None:
    """Load whole-model / whole-optimizer states saved by the two functions above."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=opts)
        if optimizer is not None and optim_state is not None:
            set_optimizer_state_dict(model, optimizer, optim_state, options=opts)
        return
    from lmforge.models.io import load_state_into

    load_state_into(model, model_state, "checkpoint")
    if optimizer is not None and optim_state is not None:
        optimizer.load_state_dict(optim_state)
