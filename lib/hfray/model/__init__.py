"""Tokenizers and models: checked from their configs on the driver, built on every worker.

- :mod:`~hfray.model.loading`: tokenizers, configs and task models, pretrained or from ``model.architecture``;
- :mod:`~hfray.model.language_model`: masked and causal LMs for pre-training and TRL;
- :mod:`~hfray.model.peft`: PEFT adapters (LoRA, QLoRA, IA3, prefix, prompt) around a built model;
- :mod:`~hfray.model.builtin`: ``builtin:NAME`` models that pip packages ship.
"""
