"""``model.attn_implementation: varlen``: PyTorch's own FlashAttention variable-length kernel
(``torch.nn.attention.varlen.varlen_attn``) as a transformers attention function. Registered in the process that
builds the model (a Ray Train worker, an in-process sweep trial) by :func:`hfray.model.loading.attention_kwargs`.

Why: a packed SFT batch holds several documents per row. transformers' sdpa attends them under a per-document mask,
which keeps sdpa off its causal flash kernel: hfray's packed LoRA SFT step ran at 0.27-0.30 of the bare compiled step
of the same shape on an H100, its forward + backward 329 of 357 ms
(``bench/results/throughput_gpu_dec05_sft_bare_h100.md``). TRL packs for FlashAttention's varlen kernel (one flattened
row, documents told apart by cumulative lengths), but ``flash_attn`` is a separate CUDA build that few environments
have; PyTorch (CUDA builds, >= 2.10) ships that kernel itself. So: the flattened row, causal within each document, no
mask, no padding, no extra package.

The documents' bounds come from TRL's padding-free collator (``cu_seq_lens_q`` / ``max_length_q``, computed on the
CPU: no device sync per layer) or else from the position ids, as transformers' FlashAttention path finds them; a
padding mask (a batch of padded rows, e.g. evaluation) is unpadded first. Training and scoring only: a step against
a KV cache (generation) is refused with the key to change. Off CUDA it runs a slow reference (sdpa per document), for
tests.
"""

from __future__ import annotations

import inspect
from typing import Any

NAME = "hfray_varlen"  # the name transformers knows it by (config._attn_implementation)


def available() -> bool:
    """Whether this torch has the kernel (CUDA builds of torch >= 2.10; it raises on CPU tensors)."""
    import importlib.util

    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def runs_here() -> bool:
    """Whether this process's GPU runs the kernel: PyTorch's FlashAttention needs compute capability 8.0 or newer
    (A100, H100, ...); on older cards (T4, V100) packed SFT keeps sdpa. Called on a worker, which sees its GPU."""
    import torch

    return available() and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def register() -> str:
    """Registers the attention function and its mask (FlashAttention's: none for a causal batch, the 2D padding mask
    otherwise) with transformers; returns the name to pass as ``attn_implementation``. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    if available():
        _kernel_options()  # looked up now, outside any compiled region (Dynamo would not trace inspect)
    return NAME


_KERNEL: list[tuple[Any, frozenset[str]]] = []  # filled once: a plain global that a compiled layer reads


def _kernel_options() -> tuple[Any, frozenset[str]]:
    """The kernel and its keyword names: torch 2.10/2.11 take ``is_causal``, later ones ``window_size`` and GQA."""
    if not _KERNEL:
        from torch.nn.attention.varlen import varlen_attn

        _KERNEL.append((varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)))
    return _KERNEL[0]


def _attend(q: Any, k: Any, v: Any, cu: Any, max_len: int, scale: float | None, causal: bool) -> Any:
    """(tokens, heads, head_dim) q/k/v -> the kernel's output; GQA by the kernel where it can, else by repeating.
    Off CUDA (the kernel has no CPU path): sdpa document by document, the reference the CPU tests compare with."""
    if q.device.type != "cuda":
        return _reference(q, k, v, cu, scale, causal)
    kernel, params = _kernel_options()
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kwargs["is_causal"] = causal
    if q.size(1) != k.size(1):
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    return kernel(q, k, v, cu, cu, max_len, max_len, **kwargs)


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention signature: (batch, heads, seq, head_dim) in, (batch, seq, heads, head_dim) out."""
    import torch
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    batch, heads, seq, head_dim = query.shape
    if key.shape[2] != seq:
        raise NotImplementedError(
            "model.attn_implementation=varlen trains and scores whole sequences; generating with a KV cache needs "
            "sdpa (set model.attn_implementation: sdpa for jobs that generate)"
        )
    if dropout:
        raise NotImplementedError("model.attn_implementation=varlen has no attention dropout (set it to 0)")
    dtype = query.dtype
    if dtype == torch.float32:  # the kernel wants half precision: autocast's, else bf16
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
    q, k, v = (t.transpose(1, 2).to(dtype) for t in (query, key, value))  # (batch, seq, heads, head_dim)
    causal = getattr(module, "is_causal", True)
    if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        return _attend_padded(q, k, v, attention_mask, scaling, causal).to(query.dtype), None
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None or max_len is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:  # one document per row
            cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=q.device)
            max_len = seq
        else:
            # as transformers' FlashAttention path reads them: a document starts at each smallest position id
            (cu, _), (max_len, _) = prepare_fa_kwargs_from_position_ids(position_ids.expand(batch, seq))
    flat = (t.reshape(batch * seq, t.size(2), head_dim) for t in (q, k, v))
    out = _attend(*flat, cu.to(q.device, torch.int32), int(max_len), scaling, causal)
    return out.view(batch, seq, heads, head_dim).to(query.dtype), None


def _attend_padded(q: Any, k: Any, v: Any, mask: Any, scale: float | None, causal: bool) -> Any:
    """Padded rows (a 2D mask, left or right padding): the real tokens only, one document per row, scattered back
    into zeros at the padding."""
    import torch

    batch, seq, heads, head_dim = q.shape
    keep = mask.reshape(-1).bool()
    lengths = mask.sum(-1, dtype=torch.int32)
    cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    picked = (t.reshape(batch * seq, t.size(2), head_dim)[keep] for t in (q, k, v))
    out = _attend(*picked, cu, int(lengths.max()), scale, causal)
    full = out.new_zeros(batch * seq, heads, head_dim)
    full[keep] = out
    return full.view(batch, seq, heads, head_dim)


def _reference(q: Any, k: Any, v: Any, cu: Any, scale: float | None, causal: bool) -> Any:
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    bounds = cu.tolist()
    outs = [
        sdpa(*(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=causal, scale=scale, enable_gqa=True)
        for a, b in zip(bounds[:-1], bounds[1:], strict=False)
    ]
    return torch.cat([o.transpose(0, 1) for o in outs])
