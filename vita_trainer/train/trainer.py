"""VitaTrainer: HF Trainer plus atomic checkpoints, token accounting, per-module learning rates and
a non-finite-loss guard."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import rotate_checkpoints

from vita_api.errors import ConfigError, VitaError
from vita_api.module_groups import group_of
from ..data.sample import MEDIA_LABELS
from ..model import device_checks
from .faults import barrier, crash_in_save, fault_nonfinite, fault_oom

log = logging.getLogger("vita_trainer")
STAGING = ".staging"




def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """Newest checkpoint-N. Checkpoints are renamed into place only when complete, so any is loadable."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return str(max(steps)[1]) if steps else None


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def prepare_resume(output_dir: str | Path, requested: str | None, is_main: bool) -> str | None:
    """The checkpoint every rank resumes from, chosen once by rank 0 and broadcast (ranks listing the folder
    while rank 0 renames a new checkpoint into place could otherwise pick different ones). Rank 0 also removes
    the staging folder a crashed attempt left (shards of another world size would mix into zero_to_fp32)."""
    root = Path(output_dir)
    choice = [None]
    if is_main:
        shutil.rmtree(root / STAGING, ignore_errors=True)
        choice[0] = last_complete_checkpoint(root) if requested in (None, "auto", "True", "true") else requested
    if _dist():
        torch.distributed.broadcast_object_list(choice, src=0)
    if choice[0]:
        check_world_size(choice[0])
    return choice[0]


def check_world_size(checkpoint: str | Path) -> None:
    """A ZeRO checkpoint holds one optimizer/parameter partition per rank: resuming on another number of ranks
    cannot load it. Stop with what to do instead of DeepSpeed's shape error deep in the load."""
    shards = list(Path(checkpoint).glob("global_step*/*zero_pp_rank_*_mp_rank_00_model_states.pt"))
    world = torch.distributed.get_world_size() if _dist() else int(os.environ.get("WORLD_SIZE", "1"))
    if shards and len(shards) != world:
        raise ConfigError(f"{checkpoint} was written by {len(shards)} ranks but this run has {world}: a ZeRO "
                          f"checkpoint resumes only on the same number of ranks. Run the stage on {len(shards)} "
                          f"ranks again, or start a new stage from its weights (vita-model convert {checkpoint} "
                          f"OUT, then use OUT as the model)")


def token_budget_sampler(dataset, args, max_tokens: int, packed: bool):
    """The token-budget batch sampler (data/token_budget.py). Each rank reads the headers of every world_size-th
    sample and the ranks exchange their shares, so all ranks plan the same batches and no rank scans the mixture
    alone while the others wait on a collective's timeout."""
    from ..data.token_budget import TokenBudgetSampler
    world = max(1, args.world_size) if _dist() else 1
    mine = dataset.token_lengths(args.process_index if world > 1 else 0, world)
    shares: list = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(shares, mine)
    else:
        shares = [mine]
    lengths = [0] * len(dataset)
    for rank, share in enumerate(shares):
        lengths[rank::world] = share
    return TokenBudgetSampler(lengths, max_tokens, packed=packed, dp_size=max(1, args.world_size),
                              grad_accum=args.gradient_accumulation_steps, rank=args.process_index, seed=args.seed)


BATCH_COUNTS = "vita_batch_counts"


class CountingCollator:
    """The trainer's collator: the model inputs, plus what the metrics count (real tokens, skipped samples) under
    one key that compute_loss takes off before the model sees the batch. It rides in the batch because the collator
    runs in DataLoader worker processes, whose counters the trainer cannot read."""

    def __init__(self, collate, flops=None):
        self.collate = collate
        self.flops = flops  # model/flops.StepFlops, for MFU; None: not counted

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.collate(samples)
        batch[BATCH_COUNTS] = {"tokens": sum(len(s["input_ids"]) for s in samples),
                               "positions": batch["input_ids"].numel(), "samples": len(samples),
                               "flops": sum(self.flops.processed(s) for s in samples) if self.flops else 0.0,
                               "skipped": [r for s in samples for r in s.get("skipped_reasons", [])],
                               "modalities": [s.get("modality", "text") for s in samples]}
        return batch




class VitaTrainer(Trainer):
    def __init__(self, *args, metrics_callback=None, module_lr: dict[str, float] | None = None,
                 partial_groups: frozenset[str] | None = None, step_flops=None,
                 modality_lengths=None, train_sampler=None, data_collator=None, eval_collator=None, **kwargs):
        super().__init__(*args, data_collator=CountingCollator(data_collator, step_flops) if data_collator else None,
                         **kwargs)
        self.eval_collate = eval_collator
        self._eval_sums: dict[str, list[float]] = {}
        self.metrics_callback = metrics_callback
        self.module_lr = module_lr or {}
        self.modality_lengths = modality_lengths
        self.train_sampler = train_sampler
        self._staging_root = None
        self._nonfinite: tuple | None = None   # this optimizer step's (any non-finite, first one, step), on device
        self._unsummed_tokens = 0              # this rank's tokens since the count was last summed over ranks
        # An adapter-only stage (the plan's handoff rule): its checkpoints hold only these groups' weights (and the
        # optimizer and scheduler state), as the reference's trainer saves only the adapter; None: the whole model.
        self.partial_groups = partial_groups

    # --- data ---------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        if self.train_sampler is not None:
            return self.train_sampler
        if self.modality_lengths is not None:
            # Length-grouped batches keep padding low; abs() because text-only samples carry negative lengths.
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=[abs(n) for n in self.modality_lengths])
        return super()._get_train_sampler(train_dataset)

    def _prepare_input(self, data):
        """Pinned batches (--dataloader_pin_memory, the GPU default) are copied without the host waiting for the
        copy; HF's own rules (its dtype for float inputs under DeepSpeed) then apply on the device."""
        if isinstance(data, torch.Tensor) and data.is_pinned():
            data = data.to(self.args.device, non_blocking=True)
        return super()._prepare_input(data)

    # --- loss ---------------------------------------------------------------------------------
    # Nothing in a micro-batch's forward and backward waits for the GPU (no .item(), no collective): the tokens come
    # counted from the collator, on the host, and the non-finite check runs once per optimizer step.
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        fault_oom(self.state.global_step, self.args.per_device_train_batch_size)
        counts = inputs.pop(BATCH_COUNTS, {"tokens": 0, "samples": 0, "skipped": []})
        if self.metrics_callback is not None and model.training:  # validation batches are not trained tokens
            self.metrics_callback.count_batch(counts["tokens"], counts["samples"], counts["skipped"],
                                              counts.get("flops", 0.0))
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if fault_nonfinite(self.state.global_step):
            loss = loss * float("nan")
        if model.training:
            self._note_nonfinite(loss)
        return result

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """Remembers, on the device, whether a loss of this optimizer step was not finite (and the first such)."""
        loss = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss)
        if self._nonfinite is None:
            self._nonfinite = (bad, loss, self.state.global_step)
        else:
            seen, first, step = self._nonfinite
            self._nonfinite = (seen | bad, torch.where(seen, first, loss), step)

    def _stop_on_failed_checks(self) -> None:
        """Once per optimizer step (and after an evaluation), before anything is logged or saved: a non-finite
        loss or a failed data check (model/device_checks.py) on any rank stops every rank together (one all-reduce
        of a flag), so the ranks without it do not wait in the next collective until the NCCL timeout."""
        nonfinite, self._nonfinite = self._nonfinite, None
        flags = torch.stack([device_checks.any_failed(self.args.device),
                             torch.zeros((), device=self.args.device) if nonfinite is None
                             else nonfinite[0].float().to(self.args.device)])  # [failed check, non-finite loss]
        if _dist():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        failed_check, bad_loss = flags.tolist()
        device_checks.raise_failed()  # this rank's own failed check, with its message (and clears the kept ones)
        if failed_check:
            raise VitaError(f"stopping: a batch on another rank failed a data check at step "
                            f"{self.state.global_step} (its log says which)")
        if bad_loss:
            seen, first, step = nonfinite if nonfinite is not None else (None, None, self.state.global_step)
            where = f"({first.item()})" if seen is not None and seen.item() else "on another rank"
            raise VitaError(f"non-finite loss {where} at step {step}; lower the learning rate, enable gradient "
                            f"clipping (--max_grad_norm), or check the batch's data")

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        self._stop_on_failed_checks()
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    # --- tokens seen ----------------------------------------------------------------------------
    def _track_num_input_tokens(self, inputs):
        """HF gathers each micro-batch's count from the GPU (a collective and a host sync per micro-batch); here
        the collator's host count is kept per rank and summed over ranks only where the total is read (a log, a
        checkpoint)."""
        counts = inputs.get(BATCH_COUNTS)
        mode = self.args.include_num_input_tokens_seen
        if mode == "no" or counts is None:
            return super()._track_num_input_tokens(inputs)
        self._unsummed_tokens += counts["tokens"] if mode == "non_padding" else counts["positions"]

    def _sum_tokens_seen(self) -> None:
        mine = torch.tensor(self._unsummed_tokens, dtype=torch.int64, device=self.args.device)
        self._unsummed_tokens = 0
        self.state.num_input_tokens_seen += int(self.accelerator.gather(mine).sum().item())

    def log(self, logs, start_time=None):
        if self.args.include_num_input_tokens_seen != "no":
            self._sum_tokens_seen()  # every rank logs at the same steps
        return super().log(logs, start_time)

    # --- evaluation -----------------------------------------------------------------------------
    def get_eval_dataloader(self, eval_dataset=None):
        """Validation batches are never packed: each row is one sample, so its loss belongs to one modality."""
        train_collate = self.data_collator
        if isinstance(train_collate, CountingCollator) and self.eval_collate is not None:
            self.data_collator = CountingCollator(self.eval_collate)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collate

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss only (chunked, never the logits), and each row's summed loss added to its modality's total."""
        modalities = inputs.pop(BATCH_COUNTS, {}).get("modalities")
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            out = model(**inputs)
        sums, counts = out.get("row_loss_sums"), out.get("row_label_counts")
        if sums is not None and modalities is not None:
            for modality, row_sum, row_count in zip(modalities, sums.tolist(), counts.tolist()):
                acc = self._eval_sums.setdefault(modality, [0.0, 0.0])
                acc[0] += row_sum
                acc[1] += row_count
        return out.loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """HF's loop (its `eval_loss`), plus `eval_loss_<modality>`: that modality's summed token loss over all
        ranks divided by its labelled tokens."""
        from .metrics import _all_reduce
        self._eval_sums = {}
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        self._stop_on_failed_checks()
        # every label in a fixed order, so every rank all-reduces the same vector
        summed = _all_reduce([v for m in MEDIA_LABELS for v in self._eval_sums.get(m, (0.0, 0.0))])
        for i, modality in enumerate(MEDIA_LABELS):
            total, tokens = summed[2 * i], summed[2 * i + 1]
            if tokens:
                output.metrics[f"{metric_key_prefix}_loss_{modality.replace('+', '_')}"] = total / tokens
        return output

    # --- optimiser ----------------------------------------------------------------------------
    def _offloads_optimizer(self) -> bool:
        cfg = getattr(self.args, "hf_deepspeed_config", None)
        zero = (cfg.config if cfg is not None else {}).get("zero_optimization") or {}
        return (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")

    def create_optimizer(self, model=None):
        """Per-module learning rates as parameter groups. With the optimizer offloaded (zero3_offload) DeepSpeed
        takes only its own CPU Adam (zero_force_ds_cpu_optimizer), so the same groups go to DeepSpeedCPUAdam."""
        offload = self._offloads_optimizer()
        if (not self.module_lr and not offload) or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            lr = self.module_lr.get(group_of(name), self.args.learning_rate)
            wd = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, wd), []).append(p)
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            opt_cls, opt_kwargs = DeepSpeedCPUAdam, {"lr": self.args.learning_rate, "adamw_mode": True,
                                                     "betas": (self.args.adam_beta1, self.args.adam_beta2),
                                                     "eps": self.args.adam_epsilon}
        else:
            opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = opt_cls([{"params": ps, "lr": lr, "weight_decay": wd}
                                  for (lr, wd), ps in groups.items()], **opt_kwargs)
        log.info("optimizer %s, %d parameter groups, learning rates %s", opt_cls.__name__, len(groups),
                 sorted({lr for lr, _ in groups}))
        return self.optimizer

    # --- adapter-only checkpoints -------------------------------------------------------------
    def save_model(self, output_dir=None, _internal_call=False):
        """A checkpoint of an adapter-only stage writes {group}.bin for what trains (every rank joins the gather),
        not the gathered 16-bit model (17 GB for 7B); the stage's final outputs are written by save_outputs. A
        checkpoint of a full stage under ZeRO-3 writes no weights here either: its ZeRO shards (written with the
        optimizer's) are what a resume loads and what `vita-model convert` reads, so only the stage's final save
        gathers the 16-bit model."""
        if not _internal_call:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
        if self.partial_groups:
            from .weights import save_groups
            save_groups(self.model, self.partial_groups, output_dir, self.args.should_save)  # the bare model
            return None
        if not (self.is_deepspeed_enabled and is_deepspeed_zero3_enabled()):
            return super().save_model(output_dir, _internal_call)
        if self.args.should_save:  # what a checkpoint folder needs besides the weights: config, tokenizer, args
            self.accelerator.unwrap_model(self.model).config.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        return None

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """For an adapter-only stage under DeepSpeed, its own checkpoint leaves the frozen weights out (they are the
        stage's starting weights, loaded again at start), so a resume loads the module state non-strictly; the rest
        of the resume (optimizer, scheduler, scaler) is HF's."""
        if not (self.partial_groups and self.is_deepspeed_enabled):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        from transformers.integrations.deepspeed import deepspeed_load_checkpoint
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        engine, save = self.model_wrapped, self.model_wrapped.save_checkpoint

        def save_checkpoint(*a, **kw):
            return save(*a, **{**kw, "exclude_frozen_parameters": True})
        engine.save_checkpoint = save_checkpoint
        if resume_from_checkpoint is not None:
            deepspeed_load_checkpoint(engine, resume_from_checkpoint, load_module_strict=False)
            self._load_optimizer_and_scheduler(resume_from_checkpoint)
            self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    # --- atomic checkpoints -------------------------------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write into <output>/.staging/checkpoint-N, then rename into place: a crash mid-save leaves the
        previous checkpoint untouched and no half-written checkpoint-N behind."""
        start = time.monotonic()
        if self.args.include_num_input_tokens_seen != "no":
            self._sum_tokens_seen()  # the count the checkpoint's trainer_state.json keeps for a resume
        final_root = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        self._staging_root = os.path.join(final_root, STAGING)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        crash_in_save(self.state.global_step)  # test hook (faults.py)
        barrier()
        if self.args.should_save:
            src, dst = os.path.join(final_root, STAGING, name), os.path.join(final_root, name)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(src, dst)
            rotate_checkpoints(final_root, self.args.save_total_limit, self.state.best_model_checkpoint)
        barrier()
        if self.metrics_callback is not None:
            self.metrics_callback.m.checkpoint_seconds.labels(self.metrics_callback.stage).observe(
                time.monotonic() - start)
