"""SFT's per-step metrics without host syncs (on each worker): TRL's numbers, read from the device at logging time.

Why: TRL 1.16's ``SFTTrainer.compute_loss`` turns its step metrics into Python floats in every training step, right
after the forward and before the backward: ``bool(num_valid > 0)`` and ``.item()`` for entropy and token accuracy,
``.item()`` for ``num_tokens``. Each one waits for the device to finish the forward, and the host cannot queue the
backward's kernels in the meantime: the device idles while the host catches up, every step. Its fused LM head
(``add_fused_lm_head``) also indexes the hidden states with the label mask (``hidden_states[mask]``: the host waits
for the mask's count in the middle of the forward).

Here, for the plain SFT loss (TRL's ``nll`` with none of ``compute_loss_func``, label smoothing, MoE aux loss or
sequence parallelism), the step computes TRL's loss the same way, keeps the three per-step sums (valid tokens,
entropy, top-1 hits) on the device, and counts tokens on the host from the batch's shape where TRL's count is one
(the padding-free row; the rows layout: all its positions, as ``rows.RowTokens`` counts). At each log, one gather
and one device-to-host copy turn them into TRL's metrics: per step entropy / valid and hits / valid, averaged by TRL's
``log`` as before, ``num_tokens`` its running total. With packing, the fused head scores every position (TRL's path
for devices without Triton) instead of the valid ones: the same numbers (positions without a label give 0 and are
masked), no count to wait for, and packed rows have few positions without a label (unpacked batches keep TRL's
compact path: their padding would cost head FLOPs). Evaluation and other losses run TRL's own code.

``trl.deferred_metrics`` (default on; ``false``: TRL's own ``compute_loss``). TRL 1.16's private ``_metrics``,
``_total_train_tokens`` and ``trl.trainer.utils._use_triton``: ``tests/train/test_trl_deferred.py`` fails if an
upgrade moves them.
"""

from __future__ import annotations

from typing import Any

FLUSH_EVERY = 1000  # steps between logs (logging_steps larger than this): flush anyway, the pending list stays small


class PendingSteps:
    """A TRL trainer's per-step metric sums kept on the device (``pending``: one tensor a step) and turned into its
    ``_metrics`` at each log (:meth:`flush`, the subclass's); ``log`` replaces the trainer's."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.compute_loss, self.log_now = trainer.compute_loss, trainer.log
        self.pending: list[Any] = []

    def keep(self, step_sums: Any) -> None:
        """One step's sums, on the device; flushed early if logs are further apart than :data:`FLUSH_EVERY` steps."""
        self.pending.append(step_sums)
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.pending:
            self.flush()
        return self.log_now(logs, start_time)

    def flush(self) -> None:
        raise NotImplementedError

    def gathered(self) -> Any:
        """The pending steps from every rank: (ranks, steps, sums), one gather; ``pending`` emptied."""
        import torch

        steps = torch.stack(self.pending)
        self.pending = []
        # gather, not gather_for_metrics: the latter trims to the dataloader's remainder at an epoch's last batch,
        # which would cut ranks here (every rank holds the same steps)
        return self.trainer.accelerator.gather(steps.unsqueeze(0))


class DeferredMetrics(PendingSteps):
    """Replaces an SFT trainer's ``compute_loss`` and ``log`` (see the module's docstring). ``pending``: (valid tokens,
    entropy sum, top-1 hits) of each step."""

    def __init__(self, trainer: Any, every_position: bool = False) -> None:
        super().__init__(trainer)
        self.every_position = every_position
        self.tokens_host = 0
        self.tokens_device: Any = 0

    def applies(self) -> bool:
        t = self.trainer
        sp = getattr(t.accelerator, "parallelism_config", None)
        return (
            t.compute_loss_func is None
            and t.label_smoother is None
            and t.args.loss_type == "nll"
            and not getattr(t, "aux_loss_enabled", False)
            and not (sp is not None and getattr(sp, "sp_enabled", False))
        )

    def loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        import torch

        if return_outputs or not model.training:
            kwargs = {"return_outputs": return_outputs, "num_items_in_batch": num_items_in_batch}
            return self.compute_loss(model, inputs, **kwargs)
        inputs["use_cache"] = False
        outputs = self.forward(model, inputs)
        count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(count).clamp(min=1)
        t = self.trainer
        if t.args.average_tokens_across_devices and num_items_in_batch is not None:  # as TRL (and Trainer) scale it
            loss = loss * (t.accelerator.num_processes // t.get_tp_size())
        if "attention_mask" in inputs:
            self.tokens_device = self.tokens_device + inputs["attention_mask"].sum()
        else:  # padding-free (one row: its length) or rows (every position): the shape alone
            self.tokens_host += inputs["position_ids"].numel()
        sums = (outputs.label_mask.sum(), outputs.entropy.detach().sum(), outputs.is_top1.sum())
        self.keep(torch.stack([s.float() for s in sums]))
        return loss

    def forward(self, model: Any, inputs: dict[str, Any]) -> Any:
        if not self.every_position:
            return model(**inputs, fused_lm_head=True)
        import trl.trainer.utils as trl_utils

        compact = trl_utils._use_triton  # what TRL's fused head asks, at each call, to choose its path
        trl_utils._use_triton = _score_every_position
        try:
            return model(**inputs, fused_lm_head=True)
        finally:
            trl_utils._use_triton = compact

    def flush(self) -> None:
        """The pending steps into TRL's ``_metrics["train"]``: one gather across ranks, one copy to the host."""
        import torch

        t = self.trainer
        gathered = self.gathered()  # (ranks, steps, 3)
        local = torch.as_tensor(self.tokens_device, device=gathered.device, dtype=torch.float64) + self.tokens_host
        tokens = t.accelerator.gather(local.reshape(1)).sum()
        summed = gathered.sum(0)
        valid = summed[:, 0].clamp(min=1)
        values = torch.stack([summed[:, 1] / valid, summed[:, 2] / valid]).double().cpu()
        metrics = t._metrics["train"]
        metrics["entropy"].extend(values[0].tolist())
        metrics["mean_token_accuracy"].extend(values[1].tolist())
        t._total_train_tokens += int(tokens.item()) // t._tp_size
        metrics["num_tokens"] = [t._total_train_tokens]
        self.tokens_host, self.tokens_device = 0, 0


def defer_metrics(trainer: Any, packed: bool) -> bool:
    """Gives an ``SFTTrainer`` the deferred metrics (its loss permitting: :meth:`DeferredMetrics.applies`) and, when
    ``packed``, its fused LM head the path that scores every position. Returns whether it did."""
    deferred = DeferredMetrics(trainer, every_position=packed)
    if not deferred.applies():
        return False
    trainer.compute_loss, trainer.log = deferred.loss, deferred.log
    return True


def _score_every_position(device: Any) -> bool:
    """For TRL's fused head: never compact the valid positions (``hidden_states[mask]`` waits for their count)."""
    return False
