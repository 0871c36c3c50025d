"""Packed-sample attention without the flash-attn package, registered through transformers'
``AttentionInterface``.

A packed micro-batch is one sequence [1, T] whose ``position_ids`` restart at 0 for every sample
(train/data.py); each backend keeps attention inside each sample and causal:

==================  =========================================================  ==========================
``model.attn_...``  kernel                                                      mask memory
==================  =========================================================  ==========================
``varlen``          ``torch.nn.attention.varlen.varlen_attn`` (flash, CUDA)     cu_seqlens: O(samples)
``flex_attention``  ``torch.nn.attention.flex_attention`` (compiled on CUDA)    BlockMask: O((T/128)^2)
``sdpa``            transformers' SDPA with a dense block-causal mask           bool [T, T]: O(T^2)
==================  =========================================================  ==========================

The first two are registered under our own names (``hermes_varlen``, ``hermes_flex``): transformers
builds no mask for a name it does not know, so no [T, T] tensor is ever made, and each function derives
its sample boundaries from the ``position_ids`` that every attention call receives. That is also what
makes them correct under Ulysses sequence parallelism (train/sequence_parallel.py), whose wrapper drops
the model's mask and hands the core attention the gathered full-row ``position_ids``. ``hermes_sdpa``
is the same contract with a dense mask: the CPU reference, and the core under SP on CPU.

``hermes_varlen`` and ``hermes_flex`` are the kernels of record on GPU; on CPU their glue (cu_seqlens,
head layouts, GQA) is tested against SDPA with an injected reference kernel (tests/unit/train/).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

VARLEN, FLEX, PACKED_SDPA = "hermes_varlen", "hermes_flex", "hermes_sdpa"
# What users write in model.attn_implementation -> the name registered with transformers.
REGISTERED = {"varlen": VARLEN, "flex_attention": FLEX}
VARLEN_MIN_TORCH = "2.10"
FLEX_MIN_TORCH = "2.5"


# ----------------------------------------------------------------------------- sample boundaries


def sample_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Token indices where a sample starts in the flattened row: position 0, or any break in the +1 run
    (transformers' rule too, so the SDPA mask and these agree on any input)."""
    pos = position_ids.reshape(-1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] != pos[:-1] + 1
    return starts.nonzero().view(-1)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(int32 cumulative sample lengths [samples + 1], longest sample) of a packed row."""
    starts = sample_starts(position_ids)
    total = position_ids.numel()
    cu = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max()) if total else 0
    return cu, max_len


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[T] sample index of every token of the flattened row."""
    pos = position_ids.reshape(-1)
    starts = torch.zeros_like(pos)
    starts[sample_starts(position_ids)] = 1
    return starts.cumsum(0) - 1


def _packed_kwargs(query: torch.Tensor, kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """cu_seqlens for this call: precomputed by the caller (``cu_seq_lens_q``/``max_length_q``, the
    FlashAttentionKwargs names) or derived from ``position_ids``."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and kwargs.get("max_length_q") is not None:
        return cu.to(device=query.device, dtype=torch.int32), int(kwargs["max_length_q"])
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError("packed attention needs position_ids (samples restart at 0) in every forward call")
    if query.shape[0] != 1:
        raise ValueError(
            f"packed attention expects one flattened row per micro-batch, got batch {query.shape[0]}"
        )
    cu, max_len = cu_seqlens_from_position_ids(position_ids)
    return cu.to(query.device), max_len


# ------------------------------------------------------------------------------------------- varlen


def _torch_varlen() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_kernel_call(q, k, v, cu, max_len: int, scale: float | None) -> torch.Tensor:
    """Causal ``varlen_attn`` on [T, H, D] inputs, for whichever of its two signatures is installed:
    torch 2.10 (``is_causal``, no GQA) or later (``window_size=(-1, 0)``, ``scale``, ``enable_gqa``)."""
    fn = _torch_varlen()
    if fn is None:
        raise ValueError(unavailable_message("varlen"))
    params = inspect.signature(fn).parameters
    if "enable_gqa" not in params and k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    kw: dict[str, Any] = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if "enable_gqa" in params:
        kw["enable_gqa"] = k.shape[1] != q.shape[1]
    if "scale" in params:
        kw["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(
            "this torch's varlen_attn has no scale argument; the model's scaling is not 1/sqrt(d)"
        )
    return fn(q, k, v, cu, cu, max_len, max_len, **kw)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kernel: Callable = varlen_kernel_call,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: [1, H, T, D] in, [1, T, H, D] out. ``kernel`` is replaceable
    (tests inject a reference with the same contract)."""
    if dropout:
        raise ValueError("varlen attention runs without attention dropout (Llama uses none)")
    cu, max_len = _packed_kwargs(query, kwargs)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
    out = kernel(q, k, v, cu, max_len, scaling)
    return out.unsqueeze(0), None


def reference_varlen_kernel(q, k, v, cu, max_len: int, scale: float | None) -> torch.Tensor:
    """The ``varlen_attn`` contract computed sample by sample with SDPA (CPU tests)."""
    outs = []
    bounds = cu.tolist()
    for a, b in itertools.pairwise(bounds):
        qi, ki, vi = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [H, L, D]
        if ki.shape[0] != qi.shape[0]:
            ki = ki.repeat_interleave(qi.shape[0] // ki.shape[0], dim=0)
            vi = vi.repeat_interleave(qi.shape[0] // vi.shape[0], dim=0)
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs, dim=0)


# --------------------------------------------------------------------------------------------- flex


class _BlockMaskCache:
    """The document BlockMask of the current row: built once per forward (every layer, and the
    gradient-checkpointing recompute, sees the same position_ids)."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.mask = None

    def get(self, position_ids: torch.Tensor, device: torch.device):
        from torch.nn.attention.flex_attention import create_block_mask

        pos = position_ids.reshape(-1)
        if (
            self.key is not None
            and self.key.shape == pos.shape
            and torch.equal(self.key, pos.to(self.key.device))
        ):
            return self.mask
        doc = document_ids(pos).to(device)

        def causal_document(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (doc[q_idx] == doc[kv_idx])

        n = pos.numel()
        # compiled on CUDA: the mask is built block by block, never as a [T, T] tensor
        compiled = device.type == "cuda" and "_compile" in inspect.signature(create_block_mask).parameters
        kwargs = {"_compile": True} if compiled else {}
        self.mask = create_block_mask(causal_document, None, None, n, n, device=device, **kwargs)
        self.key = pos.detach().clone()
        return self.mask


_FLEX_MASKS = _BlockMaskCache()
_FLEX_COMPILED: dict[str, Callable] = {}


def _flex_fn(device: torch.device) -> Callable:
    """FlexAttention, compiled on CUDA (the fused kernel); eager elsewhere (CPU tests: an unfused
    reference that materializes the scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _FLEX_COMPILED:
        _FLEX_COMPILED["cuda"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED["cuda"]


def flex_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: FlexAttention with a causal document mask from position_ids."""
    if dropout:
        raise ValueError("flex attention runs without attention dropout (Llama uses none)")
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError("packed attention needs position_ids (samples restart at 0) in every forward call")
    mask = _FLEX_MASKS.get(position_ids, query.device)
    gqa = key.shape[1] != query.shape[1]
    out = _flex_fn(query.device)(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


# -------------------------------------------------------------------------------------- dense SDPA


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA with a dense causal document mask from position_ids (O(T^2) memory: CPU and references)."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError("packed attention needs position_ids (samples restart at 0) in every forward call")
    doc = document_ids(position_ids).to(query.device)
    n = doc.numel()
    idx = torch.arange(n, device=query.device)
    mask = (doc[:, None] == doc[None, :]) & (idx[:, None] >= idx[None, :])
    gqa = key.shape[1] != query.shape[1]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa
    )
    return out.transpose(1, 2).contiguous(), None


FUNCTIONS: dict[str, Callable] = {
    VARLEN: varlen_attention_forward,
    FLEX: flex_attention_forward,
    PACKED_SDPA: packed_sdpa_forward,
}


def register_backends() -> None:
    """Make our names known to transformers (idempotent)."""
    from transformers import AttentionInterface

    for name, fn in FUNCTIONS.items():
        AttentionInterface.register(name, fn)


# --------------------------------------------------------------------------------------- selection


def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def unavailable_message(name: str) -> str:
    need = {"varlen": VARLEN_MIN_TORCH, "flex_attention": FLEX_MIN_TORCH}[name]
    module = {"varlen": "torch.nn.attention.varlen", "flex_attention": "torch.nn.attention.flex_attention"}[
        name
    ]
    return (
        f"model.attn_implementation={name} needs {module} (PyTorch >= {need}); the installed torch is "
        f"{torch.__version__}. Upgrade torch, or use attn_implementation: auto"
    )


def _probe(name: str, device: torch.device) -> str | None:
    """None when ``name`` runs forward + backward on ``device`` on a tiny packed GQA input, else why not."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, h, 8, 64, generator=gen).to(device, dtype).requires_grad_() for h in (4, 2, 2))
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]], device=device)
    try:
        out, _ = FUNCTIONS[REGISTERED[name]](None, q, k, v, None, scaling=0.125, position_ids=pos)
        out.float().sum().backward()
    except Exception as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return None


def dense_mask_cost(seq_len: int | None) -> str:
    if not seq_len:
        return "a dense [T, T] mask per micro-batch (O(T^2) memory) and no flash kernel"
    return (
        f"a dense {seq_len:,} x {seq_len:,} mask per micro-batch ({seq_len * seq_len / 1e9:.2f} GB as bool, "
        "made again for every forward) and no flash kernel (SDPA falls back to its masked kernels)"
    )


def resolve_attention(requested: str, on_gpu: bool, seq_len: int | None = None) -> tuple[str, str | None]:
    """(transformers attn_implementation name, a warning or None) for ``model.attn_implementation``.

    Explicit choices are checked (a clear ValueError where the installed torch or device lacks them);
    ``auto`` on GPU tries flash-attn, varlen, flex in that order and falls back to SDPA with a warning
    naming the memory cost at ``seq_len``; on CPU it is SDPA (the kernels above are CUDA kernels)."""
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    if requested == "flash_attention_2":
        if not (on_gpu and _flash_attn_installed()):
            raise ValueError(
                "model.attn_implementation=flash_attention_2 needs a GPU and `pip install flash-attn`"
            )
        return requested, None
    if requested == "varlen":
        if _torch_varlen() is None:
            raise ValueError(unavailable_message("varlen"))
        if not on_gpu:
            raise ValueError(
                "model.attn_implementation=varlen runs PyTorch's flash kernels, which are CUDA-only; on CPU use "
                "sdpa (or auto)"
            )
        return VARLEN, None
    if requested == "flex_attention":
        try:
            importlib.import_module("torch.nn.attention.flex_attention")
        except ImportError as err:
            raise ValueError(unavailable_message("flex_attention")) from err
        if not on_gpu:
            raise ValueError(
                "model.attn_implementation=flex_attention: FlexAttention has no backward pass on CPU (torch "
                f"{torch.__version__}); train with sdpa (or auto) on CPU"
            )
        return FLEX, None
    if requested != "auto":
        return requested, None
    if not on_gpu:
        return "sdpa", None
    if _flash_attn_installed():
        return "flash_attention_2", None
    reasons = []
    for name in ("varlen", "flex_attention"):
        why = _probe(name, device)
        if why is None:
            return REGISTERED[name], None
        reasons.append(f"{name}: {why}")
    return "sdpa", (
        f"attn_implementation auto: no packed flash kernel works here ({'; '.join(reasons)}); using SDPA with "
        + dense_mask_cost(seq_len)
    )
