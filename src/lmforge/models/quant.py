"""int8 inference on the CPU: linear layers whose weights are int8 with one scale per output
channel (:class:`Int8Linear`), put in place of a model's ``nn.Linear`` s by :func:`quantize_int8`
(what ``--dtype int8`` does to a loaded model).

Why: decoding a few rows at a time is bound by reading the weights, once per step, from memory;
int8 weights are a quarter of the bytes of fp32 ones. Each output channel ``n`` keeps
``w[n, :] ~= scale[n] * q[n, :]`` with ``q`` in [-127, 127] and ``scale[n] = max_k |w[n, k]| / 127``
(symmetric, round to nearest), so an entry is off by at most ``scale[n] / 2``.

Two kernels, both torch's own:

- **the few rows of a decode step** (fp32 activations, at most ``KERNEL_MAX_ROWS`` rows): fbgemm's
  dynamically quantised linear (``quantized.linear_dynamic``, the kernel of
  ``torch.ao.quantization.quantize_dynamic``): the activations are quantised to 8 bits on the fly
  (one scale per call, from the rows' range), multiplied in int8 with int32 sums, and scaled back.
  It is 3x faster than an fp32 matmul at batch 1 here, where the weight-only kernel below is 3x
  slower (docs/inference.md). CPUs without VNNI instructions sum pairs of products in 16 bits, so
  there the activations use 7 bits (fbgemm's ``reduce_range``) to stay clear of overflow.
- **everything else** (bf16 activations, or a torch build whose quantised engine cannot pack the
  weight): torch's weight-only kernel ``aten._weight_int8pack_mm`` (int8 (N, K) weight, (N,)
  scales in the activations' dtype; it dequantises on the fly and sums in float); and for many
  rows (a prefill, a scoring pass) the dequantised weight in a float matmul, the same product.

Nothing here has a backward: a quantised model is for inference.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.nn import LMHead, softcap

QMAX = 127  # symmetric: -127 .. 127 (-128 unused, so that q and -q are both representable)
BF16_BLOCK = 16  # bf16 activations go through the kernel only when the input features are a multiple of this


def int8_kernel():
    """torch's int8 weight-only matmul, or None in a torch build without it."""
    return getattr(torch.ops.aten, "_weight_int8pack_mm", None)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) of a (N, K) float weight: q int8 (N, K) contiguous, scale (N,) in ``w``'s dtype,
    with ``w ~= scale[:, None] * q``; the scales are computed in fp32 (an all-zero row gets scale 1)."""
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(w32 / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
    return q, scale.to(w.dtype)


# rows (tokens in the batch) up to which the int8 kernels are used; more go through a dequantised matmul
KERNEL_MAX_ROWS = 32


@functools.cache
def _reduce_range() -> bool:
    """fbgemm's 7-bit activations: needed unless the CPU has VNNI (int8 dot products summed in 32 bits)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags)


def pack_for_dynamic(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed form of the int8 weight ``q`` (N, K) with per-channel ``scale``: what
    ``quantized.linear_dynamic`` multiplies by, the same int8 values; None where the build's
    quantised engine cannot pack it (then the weight-only kernel is used)."""
    if q.device.type != "cpu":
        return None
    try:
        with warnings.catch_warnings():  # torch warns that quantised tensors will move out of torch
            warnings.simplefilter("ignore")
            zero = torch.zeros(q.shape[0], dtype=torch.long)
            weight = torch._make_per_channel_quantized_tensor(q, scale.detach().double(), zero, 0)
            return torch.ops.quantized.linear_prepack(weight, None if bias is None else bias.detach().float())
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


def int8_linear(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, packed=None
) -> torch.Tensor:
    """``F.linear(x, scale[:, None] * q, bias)`` with int8 weights, for any leading shape of ``x``:
    a few fp32 rows through fbgemm's dynamic int8 kernel when ``packed`` (:func:`pack_for_dynamic`,
    the bias included) is given, else through torch's weight-only kernel; many rows through the
    dequantised weight."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if packed is not None and x2.dtype == torch.float32 and x2.shape[0] <= KERNEL_MAX_ROWS:
        y = torch.ops.quantized.linear_dynamic(x2, packed, _reduce_range())
        return y.reshape(*shape[:-1], q.shape[0])
    if x2.shape[0] > KERNEL_MAX_ROWS:
        # a prefill or a scoring pass: the kernel is built for the few rows of a decode step and runs
        # ~20x slower than a float matmul here, so dequantise (the same product) for many rows
        y = F.linear(x2, q.to(x2.dtype) * scale.to(x2.dtype)[:, None])
    elif x2.dtype == torch.bfloat16 and shape[-1] % BF16_BLOCK:
        # the kernel's bf16 path crashes (a segmentation fault in torch 2.13) when the input
        # features are not a multiple of 16: that case runs in fp32
        y = torch.ops.aten._weight_int8pack_mm(x2.float(), q, scale.float()).to(x2.dtype)
    else:
        if scale.dtype != x2.dtype:  # the kernel wants the scales in the activations' dtype
            scale = scale.to(x2.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x2, q, scale)
    if bias is not None:
        y = y + bias
    return y.reshape(*shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and per-output-channel scales (buffers, not parameters:
    nothing here trains). ``qweight`` (out, in) int8, ``scale`` (out,) and ``bias`` (out,) in the
    float dtype of the layer it replaced (``model.to(dtype)`` moves them with the rest)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The int8 layer of ``linear``'s weights (``linear`` itself is left as it is)."""
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=w.dtype, device=w.device)
        new.qweight, new.scale = quantize_weight(w)
        if linear.bias is not None:
            new.bias = linear.bias.detach().clone()
        return new

    def dequantized(self) -> torch.Tensor:
        """The (out, in) float weight this layer computes with, ``scale[:, None] * q``."""
        return self.scale[:, None] * self.qweight.to(self.scale.dtype)

    @property
    def packed(self):
        """The weight packed for fbgemm's dynamic kernel (:func:`pack_for_dynamic`), built on first
        use and again whenever the buffers have changed (a ``load_state_dict``, a ``.to``)."""
        key = (self.qweight.data_ptr(), self.qweight._version, self.scale.data_ptr(), self.scale._version)
        if self.bias is not None:
            key += (self.bias.data_ptr(), self.bias._version)
        if getattr(self, "_packed_key", None) != key:
            self._packed, self._packed_key = pack_for_dynamic(self.qweight, self.scale, self.bias), key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.qweight, self.scale, self.bias, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8LMHead(Int8Linear):
    """:class:`Int8Linear` over the vocabulary, with the ``logit_softcap`` of the
    :class:`~lmforge.nn.LMHead` it replaced."""

    softcap: float | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8LMHead:
        new = super().from_linear(linear)
        new.softcap = getattr(linear, "softcap", None)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softcap(super().forward(x), self.softcap)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", softcap={self.softcap}" if self.softcap is not None else "")


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds an :class:`Int8Linear`."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


def quantize_int8(model: nn.Module, include_head: bool = True) -> nn.Module:
    """Put an :class:`Int8Linear` in place of each plain ``nn.Linear`` of ``model`` (in place; the
    model is returned, in eval mode). ``include_head``: the output layer over the vocabulary
    (:class:`~lmforge.nn.LMHead`) too; a head tied to the token embedding gets its own int8 copy,
    and the embedding stays in float (a lookup reads one row per token). Subclasses of
    ``nn.Linear`` other than the head (adapters, ...) are left as they are.

    CPU only: refused, with a one-line :class:`~lmforge.errors.ConfigError`, for a model on another
    device or a torch without the kernel."""
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    if devices - {"cpu"}:
        raise ConfigError(
            f"dtype int8: int8 runs on the CPU only, this model is on {', '.join(sorted(devices - {'cpu'}))}; "
            "use --device cpu (or bf16 on a GPU)"
        )
    if int8_kernel() is None:
        raise ConfigError(f"dtype int8: torch {torch.__version__} has no int8 weight-only matmul; use fp32 or bf16")
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, Int8Linear.from_linear(child))
            elif type(child) is LMHead and include_head:
                setattr(module, child_name, Int8LMHead.from_linear(child))
    return model.eval()
