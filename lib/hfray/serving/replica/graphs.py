"""A classifier's forward pass on fixed shape buckets, replayed from captured CUDA graphs on the GPU.

Why: an eager BERT-base forward on a GPU is bound by Python and kernel launches (~7-10 ms at any batch size on
the H100 machine, CPU time = wall time; ``bench/gpu_probe.py``), and it holds the GIL all that time, so a Serve
replica's event loop cannot even gather the next batch. Replaying a captured CUDA graph costs one launch
(~1 ms for batch 64 x 16 tokens) and leaves the GIL free.

A graph replays exactly the shapes it was captured with, so inputs are padded to the next (rows, tokens)
bucket: rows 1, 2, 4, ... up to ``max_rows`` (bigger batches run in chunks), tokens 16, 32, 64, ... up to
``max_tokens``. Padded tokens carry attention mask 0 and padded rows are dropped from the output, so results
are those of the unpadded forward (up to the kernels' numerics). transformers keeps the attention mask when it
sees a stream capture (``is_tracing``), so the captured graph honours padding for every replay.

On CPU (or with ``capture=False``) the same padding runs eagerly: tests check the padding logic there and
the graphs on a GPU (``tests/gpu/test_serving_gpu.py``).
"""

from __future__ import annotations

import threading
from typing import Any


def buckets(limit: int, first: int) -> list[int]:
    """``first, 2*first, 4*first, ...`` below ``limit``, then ``limit`` itself: every size up to limit has a bucket."""
    sizes, size = [], first
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


def bucket_for(sizes: list[int], n: int) -> int:
    return next(s for s in sizes if s >= n)


class BucketedForward:
    """``logits = forward(inputs)`` for tokenized inputs of any shape up to (anything, ``max_tokens``)."""

    def __init__(
        self, model: Any, input_names: list[str], pad_id: int, max_rows: int, max_tokens: int, capture: bool
    ) -> None:
        self.model = model
        self.names = list(input_names)
        self.pad = {name: (pad_id if name == "input_ids" else 0) for name in self.names}
        self.rows = buckets(max_rows, 1)
        self.tokens = buckets(max_tokens, min(16, max_tokens))
        self.device = next(model.parameters()).device
        self.graphs: dict[tuple[int, int], tuple[Any, dict[str, Any], Any]] = {}
        # One replay at a time: graphs share static buffers and a memory pool (max_concurrent_batches > 1
        # runs batches in several threads).
        self.lock = threading.Lock()
        if capture:
            self._capture_all()

    def __call__(self, inputs: dict[str, Any]) -> Any:
        """Logits (float32, on the model's device) for ``inputs``: CPU tensors of shape (rows, tokens)."""
        import torch

        n, s = inputs["input_ids"].shape
        if s > self.tokens[-1]:
            raise ValueError(f"{s} tokens is more than the {self.tokens[-1]} this forward was built for")
        t = bucket_for(self.tokens, s)
        outs = []
        for start in range(0, n, self.rows[-1]):
            chunk = {name: inputs[name][start : start + self.rows[-1]] for name in self.names}
            outs.append(self._run(chunk, bucket_for(self.rows, len(chunk["input_ids"])), t))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _padded(self, chunk: dict[str, Any], rows: int, tokens: int) -> dict[str, Any]:
        import torch

        n, s = chunk["input_ids"].shape
        out = {}
        for name in self.names:
            full = torch.full((rows, tokens), self.pad[name], dtype=chunk[name].dtype)
            full[:n, :s] = chunk[name]
            out[name] = full
        if n < rows and "attention_mask" in out:
            out["attention_mask"][n:, 0] = 1  # a padding row attends to one token: no all-masked softmax (NaN)
        return out

    def _run(self, chunk: dict[str, Any], rows: int, tokens: int) -> Any:
        import torch

        n = len(chunk["input_ids"])
        padded = self._padded(chunk, rows, tokens)
        entry = self.graphs.get((rows, tokens))
        with torch.inference_mode():
            if entry is None:  # not captured (CPU, capture off or failed): the same shapes, eagerly
                on_device = {k: v.to(self.device) for k, v in padded.items()}
                return self.model(**on_device).logits[:n].float()
            graph, static_in, static_out = entry
            with self.lock:
                for name, value in padded.items():
                    static_in[name].copy_(value, non_blocking=True)
                graph.replay()
                # A copy (even when already float32), made on the stream before a later replay overwrites it.
                return static_out[:n].to(torch.float32, copy=True)

    def _capture_all(self) -> None:
        """Capture every bucket, largest first (what a shared memory pool wants); a failure leaves eager mode."""
        import torch

        pool = torch.cuda.graph_pool_handle()
        try:
            for rows in reversed(self.rows):
                for tokens in reversed(self.tokens):
                    self.graphs[(rows, tokens)] = self._capture(rows, tokens, pool)
        except Exception as exc:  # capture is not guaranteed for every architecture / transformers version
            self.graphs.clear()
            self.capture_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            torch.cuda.synchronize()

    def _capture(self, rows: int, tokens: int, pool: Any) -> tuple[Any, dict[str, Any], Any]:
        import torch

        static_in = {
            name: torch.full((rows, tokens), self.pad[name], dtype=torch.long, device=self.device)
            for name in self.names
        }
        if "attention_mask" in static_in:
            static_in["attention_mask"].fill_(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):  # warm-up: cuBLAS handles, lazy inits
            for _ in range(2):
                self.model(**static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            static_out = self.model(**static_in).logits
        return graph, static_in, static_out

    def describe(self) -> dict[str, Any]:
        return {
            "cuda_graphs": len(self.graphs),
            "row_buckets": self.rows,
            "token_buckets": self.tokens,
            **({"capture_error": self.capture_error} if hasattr(self, "capture_error") else {}),
        }
