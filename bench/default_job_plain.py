"""The plain-HF-Trainer comparator of hfray's embedded default job (``lib/hfray/jobs/bbc_news_minilm.yaml``).

What a transformers user writes for the same work, in one process (``run_glue.py`` style): all-MiniLM-L6-v2 with a
fresh 5-class head, BBC News (the same pip-shipped articles, 80/20 split, seed 42), max_length 128, batch 16, lr
1e-4, the Trainer's defaults otherwise. ``HFRAY_TIMELINE`` marks the same phases as hfray's timeline
(``first_step_end`` through hfray's ``ThroughputCallback``, which only times the steps).

    python bench/default_job_plain.py --steps 3 --out /tmp/plain
"""

from __future__ import annotations

import argparse
import time

STARTED = time.time()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from hfray import timeline

    timeline.mark("process_start", role="driver", at=STARTED)
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from hfray.data.builtin import load_builtin_dataset
    from hfray.model.builtin import resolve_model
    from hfray.train.callbacks.throughput import ThroughputCallback

    timeline.mark("imports", role="driver")
    torch.set_num_threads(1)  # hfray's default job: each of its 2 workers gets 1 CPU
    raw = load_builtin_dataset("builtin:bbc_news", "data.train").train_test_split(test_size=0.2, seed=42)
    labels = sorted(set(raw["train"]["label"]))
    path = resolve_model("builtin:all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    timeline.mark("data_tokenizer", role="driver")
    encoded = raw.map(
        lambda b: {
            **tokenizer(b["text"], truncation=True, max_length=128),
            "labels": [labels.index(x) for x in b["label"]],
        },
        batched=True,
        remove_columns=raw["train"].column_names,
    )
    timeline.mark("tokenized", role="driver")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    timeline.mark("model", role="driver")
    targs = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=1e-4,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=encoded["train"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[ThroughputCallback(128)],
    )
    timeline.mark("trainer_built", role="driver")
    trainer.train()


if __name__ == "__main__":
    main()
