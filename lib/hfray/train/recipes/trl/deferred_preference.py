"""DPO's per-step metrics without host syncs (on each worker): TRL's numbers, read from the device at logging time.

Why: TRL 1.16's ``DPOTrainer._compute_loss`` turns eleven step metrics into Python floats in every training step,
between the forward and the backward: 15 reads of a value (``.item()``, a tensor's truth value) and 2 boolean-mask
indexings a step, each a wait for the device (``tests/train/test_trl_deferred.py`` counts them with the profiler:
29 syncs a step -> 12 on CPU), and under DDP each metric one more all-gather across the ranks. The host cannot queue
the backward's kernels meanwhile.

Here, for TRL's standard DPO (the ``sigmoid`` loss alone, the reverse-KL divergence, none of ``ld_alpha``, WPO
weighting, a MoE aux loss or precomputed reference log-probs), the step computes TRL's loss the same way (the same
fused-head forwards of the policy and the reference, the same formula) and keeps the metrics' per-step sums in one
small tensor on the device. At each log, one gather across the ranks and one copy to the host turn them into TRL's
metrics (``rewards/*``, ``logps/*``, ``logits/*``, ``entropy``, ``mean_token_accuracy``, ``num_tokens``): per step the
same ratios TRL computes, averaged by TRL's ``log`` as before. What stays: the fused head's own compaction of the
completion positions (``hidden_states[mask]``: one wait per forward). Evaluation and other losses run TRL's code.

``trl.deferred_metrics`` (default on; ``false``: TRL's own ``compute_loss``). TRL 1.16's private ``_metrics``,
``_total_train_tokens``, ``_tp_size`` and its DPO settings' attribute names: ``tests/train/test_trl_deferred.py``
fails if an upgrade moves them.
"""

from __future__ import annotations

from typing import Any

from hfray.train.recipes.trl.deferred import PendingSteps

NOT_MODEL_INPUTS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")  # the batch's keys TRL keeps to itself
# One step's sums, in this order (each gathered across the ranks and summed before TRL's ratios are taken)
SUMS = (
    "entropy",  # per-token entropy over the completion positions (chosen and rejected)
    "completion_tokens",
    "logits_chosen",  # mean logit of each chosen completion position, summed
    "chosen_tokens",
    "logits_rejected",
    "rejected_tokens",
    "top1_chosen",  # chosen positions whose target is the argmax
    "rewards_chosen",  # beta x (policy - reference) log-ratio, summed over the pairs
    "rewards_rejected",
    "reward_wins",  # pairs whose chosen reward beats the rejected one
    "logps_chosen",
    "logps_rejected",
    "pairs",
    "tokens",  # attention-mask tokens (TRL's num_tokens)
)


class DeferredPreferenceMetrics(PendingSteps):
    """Replaces a ``DPOTrainer``'s ``compute_loss`` and ``log`` (see the module's docstring). ``pending``: one
    (len(SUMS),) tensor a step."""

    def applies(self) -> bool:
        t = self.trainer
        return (
            list(t.loss_types) == ["sigmoid"]
            and t.f_divergence_type == "reverse_kl"
            and t.ld_alpha is None
            and not t.use_weighting
            and not t.aux_loss_enabled
            and not t.precompute_ref_logps
        )

    def loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        import torch.nn.functional as F

        if return_outputs or not model.training:
            return self.compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        t = self.trainer
        kwargs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        kwargs["use_cache"] = False
        mask = inputs["completion_mask"][..., 1:]
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(**kwargs, labels=labels, fused_lm_head=True)
        seq = mask.size(1)  # prompt-learning PEFT prepends virtual tokens: the real tokens' positions
        chosen, rejected = outputs.log_probs[:, -seq:].sum(dim=1).chunk(2, dim=0)
        # TRL's own reference pass (adapter disabled, its "ref" adapter, or the reference model; no grad)
        reference = t.model if t.ref_model is None else t.ref_model
        ref_chosen, ref_rejected = t.compute_ref_log_probs(reference, inputs)
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        loss = -F.logsigmoid(t.beta * (chosen_ratio - rejected_ratio)).mean() * t.loss_weights[0]
        rewards = (t.beta * chosen_ratio.detach(), t.beta * rejected_ratio.detach())
        self.keep(self.step_sums(outputs, mask, inputs["attention_mask"], chosen, rejected, *rewards))
        return loss

    @staticmethod
    def step_sums(
        outputs: Any, mask: Any, attention: Any, chosen: Any, rejected: Any, r_chosen: Any, r_rejected: Any
    ) -> Any:
        """The step's :data:`SUMS` as one float tensor on the device (no host sync)."""
        import torch

        seq = mask.size(1)
        m = mask.float()
        chosen_mask, rejected_mask = m.chunk(2, dim=0)
        mean_chosen, mean_rejected = outputs.mean_logits[:, -seq:].chunk(2, dim=0)  # 0 where masked (TRL's scatter)
        top1_chosen = outputs.is_top1[:, -seq:].chunk(2, dim=0)[0].float() * chosen_mask
        sums = (
            (outputs.entropy[:, -seq:].detach() * m).sum(),
            m.sum(),
            (mean_chosen * chosen_mask).sum(),
            chosen_mask.sum(),
            (mean_rejected * rejected_mask).sum(),
            rejected_mask.sum(),
            top1_chosen.sum(),
            r_chosen.sum(),
            r_rejected.sum(),
            (r_chosen > r_rejected).float().sum(),
            chosen.detach().sum(),
            rejected.detach().sum(),
            m.new_full((), float(chosen.numel())),  # a fill on the device, no copy from the host
            attention.sum(),
        )
        return torch.stack([s.float() for s in sums])

    def flush(self) -> None:
        """The pending steps into TRL's ``_metrics["train"]``: one gather across ranks, one copy to the host."""
        import torch

        t = self.trainer
        s = self.gathered().sum(0).double().cpu()  # (steps, len(SUMS)), summed over the ranks
        col = {name: s[:, i] for i, name in enumerate(SUMS)}

        def ratio(num: str, den: str) -> list[float]:  # TRL: 0.0 where the denominator is 0
            d = col[den]
            return torch.where(d > 0, col[num] / d.clamp(min=1e-12), torch.zeros_like(d)).tolist()

        for tokens in col["tokens"].tolist():  # TRL adds each step's count divided by the tensor-parallel size
            t._total_train_tokens += int(tokens) // t._tp_size
        metrics = t._metrics["train"]  # TRL's keys, in TRL's order
        metrics["entropy"].extend(ratio("entropy", "completion_tokens"))
        metrics["num_tokens"] = [t._total_train_tokens]
        for name in ("chosen", "rejected"):
            metrics[f"logits/{name}"].extend(ratio(f"logits_{name}", f"{name}_tokens"))
        metrics["mean_token_accuracy"].extend(ratio("top1_chosen", "chosen_tokens"))
        metrics["rewards/chosen"].extend(ratio("rewards_chosen", "pairs"))
        metrics["rewards/rejected"].extend(ratio("rewards_rejected", "pairs"))
        metrics["rewards/accuracies"].extend(ratio("reward_wins", "pairs"))
        margins = (col["rewards_chosen"] - col["rewards_rejected"]) / col["pairs"].clamp(min=1)
        metrics["rewards/margins"].extend(margins.tolist())
        metrics["logps/chosen"].extend(ratio("logps_chosen", "pairs"))
        metrics["logps/rejected"].extend(ratio("logps_rejected", "pairs"))


def defer_metrics(trainer: Any) -> bool:
    """Gives a ``DPOTrainer`` the deferred metrics (its loss permitting: :meth:`DeferredPreferenceMetrics.applies`).
    Returns whether it did."""
    deferred = DeferredPreferenceMetrics(trainer)
    if not deferred.applies():
        return False
    trainer.compute_loss, trainer.log = deferred.loss, deferred.log
    return True
