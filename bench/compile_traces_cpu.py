"""Where a compiled BERT classifier's compiles land, step by step (Inductor on CPU, one thread, cold cache each run).

A short batch (an epoch's last) is a new batch size: Dynamo compiles the whole model again, dynamic in the batch
size, about as long as the first compile. Without ``config.problem_type`` set the forward sets it on the first
labelled batch, and Dynamo (guarding on it) traces again at the second step. hfray now sets the field
(``hfray.model.loading.classification_overrides``) and fills short batches of compiled jobs with ignored rows
(``hfray.data.classification.FullBatches``); results in ``bench/results/gpu_dec06_s7_h100.md`` (section 5).

    python bench/compile_traces_cpu.py                 # ~4 min on 2 cores: problem_type unset / set
"""

from __future__ import annotations

import json
import sys
import time

from bench_common import in_fresh_process  # a sibling module: the script's folder is on sys.path

BATCHES = [8, 8, 8, 8, 5, 8, 8, 5, 8]  # the 5s: an epoch's short last batch


def one_run(problem_type: str | None) -> dict[str, object]:
    import torch
    import torch._dynamo as dynamo
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(1)
    sizes = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 256}
    config = BertConfig(vocab_size=1000, num_labels=2, problem_type=problem_type, **sizes)
    model = BertForSequenceClassification(config)
    compiled = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    seconds = []
    for rows in BATCHES:
        start = time.perf_counter()
        ids = torch.randint(5, 1000, (rows, 64), generator=g)
        loss = compiled(input_ids=ids, attention_mask=torch.ones_like(ids), labels=(ids[:, 0] > 500).long()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        seconds.append(round(time.perf_counter() - start, 2))
    return {
        "problem_type": problem_type,
        "rows": BATCHES,
        "step_s": seconds,
        "graphs": dynamo.utils.counters["stats"]["unique_graphs"],
    }


def main() -> None:
    if len(sys.argv) > 1:  # a child: one run in a fresh process and a fresh Inductor cache
        print(json.dumps(one_run(None if sys.argv[1] == "none" else sys.argv[1])))
        return
    for problem_type in ("none", "single_label_classification"):
        print(in_fresh_process(__file__, problem_type), flush=True)


if __name__ == "__main__":
    main()
