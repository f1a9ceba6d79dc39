"""Where a GPU replica's time goes, without Serve: Python speed of the host, and the BERT-base forward.

Prints one JSON object: a pure-Python loop's time (compare hosts), then for bf16 BERT-base (from a config)
on CUDA at several batch sizes the eager forward's wall and CPU milliseconds, and the same shape replayed
from a CUDA graph when capture works. Eager CPU ~= wall means the forward is bound by Python and kernel
launches, not by the GPU; the graph replay shows what removing that overhead would give.

    python bench/gpu_probe.py --batches 1,16,64 --seq 16
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def python_speed() -> float:
    """Milliseconds for a fixed pure-Python loop (46 ms on the H100 machine, 52 ms on the 2-core dev VM)."""
    t0 = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i % 7
    return round((time.perf_counter() - t0) * 1000, 1)


def timed(fn: Any, repeat: int) -> dict[str, float]:
    import torch

    fn()
    torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return {
        "wall_ms": round((time.perf_counter() - w0) * 1000 / repeat, 3),
        "cpu_ms": round((time.process_time() - c0) * 1000 / repeat, 3),
    }


def probe_forward(batch: int, seq: int, model: Any, repeat: int) -> dict[str, Any]:
    import torch

    ids = torch.randint(1000, 2000, (batch, seq), device="cuda")
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        eager = timed(lambda: model(input_ids=ids, attention_mask=mask).logits, repeat)
    row: dict[str, Any] = {"batch": batch, "seq": seq, "eager": eager}
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                model(input_ids=ids, attention_mask=mask)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            model(input_ids=ids, attention_mask=mask)
        row["cuda_graph"] = timed(graph.replay, repeat)
    except Exception as exc:  # capture is not guaranteed for every model / transformers version
        row["cuda_graph"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    arch = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    config = AutoConfig.for_model("bert", **arch, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config).to("cuda", torch.bfloat16).eval()
    rows = [probe_forward(int(b), args.seq, model, args.repeat) for b in args.batches.split(",")]
    print(json.dumps({"python_loop_ms": python_speed(), "torch_threads": torch.get_num_threads(), "forward": rows}))


if __name__ == "__main__":
    main()
