"""Eager BERT-base classification step by SDPA backend: is cuDNN attention's host time what holds the step back?

    python3 bench/sdpa_backend_probe.py [--compiled]  # one GPU; ms per step and host ms per step for each case

A step of batch 64 x 128 launches ~250 kernels; the torch profile of hfray's step (bench/results, Dec 6) showed
``aten::_cudnn_attention_forward`` at ~1 ms of host time a call. Cases: fixed length or a new length each step,
cuDNN attention on (the default on H100) or off (flash / memory-efficient).
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification


def _case(
    model: torch.nn.Module, opt: torch.optim.Optimizer, lengths: list[int], cudnn: bool, warm: int, padded: bool
) -> dict[str, float]:
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(1000, 30000, (64, n), generator=gen).cuda(), torch.randint(0, 4, (64,), generator=gen).cuda())
        for n in lengths
    ]
    mask = None
    for i, (ids, labels) in enumerate(batches):
        if padded:  # half the rows end a quarter early: a real padding mask, not all ones
            mask = torch.ones_like(ids)
            mask[::2, -ids.shape[1] // 4 :] = 0
        if i == warm:
            torch.cuda.synchronize()
            wall, host = time.perf_counter(), time.process_time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    steps = len(batches) - warm
    return {
        "ms_per_step": round((time.perf_counter() - wall) * 1e3 / steps, 2),
        "host_ms_per_step": round((time.process_time() - host) * 1e3 / steps, 2),
    }


def main() -> None:
    model = BertForSequenceClassification(BertConfig(num_labels=4)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    fixed = [128] * 60
    ragged = [64 + (i * 37) % 65 for i in range(60)]  # a new length nearly every step
    if "--compiled" in sys.argv:  # fixed length, the model compiled: does the fused kernel's choice still matter?
        model = torch.compile(model)
        for cudnn in (True, False):
            torch._dynamo.reset()
            row = {"lengths": "fixed-compiled", "cudnn_sdp": cudnn, **_case(model, opt, fixed, cudnn, 10, False)}
            print(json.dumps(row), flush=True)
        return
    cycled = [64 + (i * 37) % 65 for i in range(200)]  # every length of 64..128 seen by step 65, then again
    cases = (("fixed", fixed, 10, False), ("ragged", ragged, 10, False), ("ragged-seen", cycled, 70, False))
    for name, lengths, warm, padded in (*cases, ("fixed-padded", fixed, 10, True), ("ragged-padded", ragged, 10, True)):
        for cudnn in (True, False):
            row = {"lengths": name, "cudnn_sdp": cudnn, **_case(model, opt, lengths, cudnn, warm, padded)}
            print(json.dumps(row), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
