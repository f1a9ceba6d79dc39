"""Compiled jobs that replay CUDA graphs (``training.cuda_graphs``, or ``training.extra_args.torch_compile_mode:
reduce-overhead``): each training step tells Inductor's CUDA-graph trees that a new iteration begins (on each worker).

Why: the trees reuse the memory of the graphs' outputs at the next replay; the mark says the last step's outputs
are no longer read, so a replay never overwrites a tensor something still holds (PyTorch's advice for training loops).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from hfray.train.arguments import replays_cuda_graphs


def wanted(extra_args: dict[str, Any], compiled: bool | None, cuda_graphs: bool | None = None) -> bool:
    """A compiled job whose regions replay CUDA graphs: ``training.cuda_graphs`` or a compile mode that records them."""
    return replays_cuda_graphs(compiled, cuda_graphs, extra_args.get("torch_compile_mode"))


class CudaGraphStepCallback(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw: Any) -> None:
        import torch

        torch.compiler.cudagraph_mark_step_begin()
