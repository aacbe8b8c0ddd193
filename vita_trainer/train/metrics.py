"""Trainer metrics for Prometheus. Metric names are defined here once; the dashboard may use only these."""

from __future__ import annotations

import logging
import os
import time

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from transformers import TrainerCallback

from vita_api.errors import DATA_ERROR_REASONS

log = logging.getLogger("vita_trainer")


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        L = ["stage"]
        self.loss = Gauge("vita_train_loss", "Training loss at the last logging step", L, registry=r)
        self.learning_rate = Gauge("vita_train_learning_rate", "Current learning rate", L, registry=r)
        self.grad_norm = Gauge("vita_train_grad_norm", "Gradient norm before clipping", L, registry=r)
        self.samples_per_second = Gauge("vita_train_samples_per_second", "Samples/s over all ranks", L, registry=r)
        self.tokens_per_second = Gauge("vita_train_tokens_per_second", "Non-pad tokens/s over all ranks", L, registry=r)
        self.step = Gauge("vita_train_global_step", "Optimizer steps done", L, registry=r)
        self.max_steps = Gauge("vita_train_max_steps", "Optimizer steps planned", L, registry=r)
        self.epoch = Gauge("vita_train_epoch", "Fractional epoch", L, registry=r)
        self.stage_info = Gauge("vita_train_stage_info", "1 for the running stage", ["stage", "preset"], registry=r)
        self.tokens = Counter("vita_train_tokens", "Non-pad tokens trained, all ranks", L, registry=r)
        self.samples = Counter("vita_train_samples", "Samples trained, all ranks", L, registry=r)
        self.skipped = Counter("vita_train_skipped_samples", "Samples skipped as unreadable", ["stage", "reason"],
                               registry=r)
        self.checkpoint_seconds = Histogram("vita_train_checkpoint_seconds", "Seconds to write a checkpoint", L,
                                            registry=r, buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800))
        self.gpu_memory = Gauge("vita_train_gpu_memory_bytes", "Peak GPU memory allocated on rank 0", L, registry=r)
        self.mfu = Gauge("vita_train_mfu", "Model FLOPs utilisation since the last log: the model FLOPs the trained "
                         "samples needed (model/flops.py) per second, over the GPUs' bf16 dense peak", L, registry=r)
        # Every rank's own figures, served by the first process of each node (so every pod is a scrape target):
        # the dashboard's per-node panels find a straggler or a node short of memory.
        R = ["stage", "node_rank", "rank"]
        self.rank_step_seconds = Gauge("vita_train_rank_step_seconds", "Mean seconds per optimizer step on this rank "
                                       "since the last log (forward, backward, optimizer)", R, registry=r)
        self.rank_data_wait_seconds = Gauge("vita_train_rank_data_wait_seconds", "Mean seconds per step this rank "
                                            "spent between steps (loading its batches): a node whose wait stands "
                                            "out is slow on input", R, registry=r)
        self.rank_tokens_per_second = Gauge("vita_train_rank_tokens_per_second", "Non-pad tokens/s of this rank "
                                            "since the last log", R, registry=r)
        self.rank_gpu_memory = Gauge("vita_train_rank_gpu_memory_bytes", "Peak GPU memory allocated on this rank",
                                     R, registry=r)
        self.nccl_bus_bandwidth = Gauge("vita_train_nccl_bus_bandwidth_gbps", "The stage's all-reduce probe: bus "
                                        "bandwidth in GB/s, labelled with the transport the collectives use (ib, "
                                        "socket, gloo, ...)", ["stage", "transport"], registry=r)
        self.eval_loss = Gauge("vita_train_eval_loss", "Validation loss at the last evaluation: all samples "
                               "(modality=\"all\") and per modality", ["stage", "modality"], registry=r)

    def names(self) -> set[str]:
        """Every sample name the exporter can expose (counters add _total, histograms _bucket/_sum/_count)."""
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "gauge": ("",)}
        return {m.name + sfx for m in self.registry.collect() for sfx in suffixes.get(m.type, ("",))}


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(values: list[float]) -> list[float]:
    if _distributed():
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()
    return values


def _all_gather(values: list[float]) -> list[list[float]]:
    """Every rank's row (the same length on every rank, or the collective would hang)."""
    if _distributed():
        rows = [torch.zeros(len(values), dtype=torch.float64) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(rows, torch.tensor(values, dtype=torch.float64))
        return [r.tolist() for r in rows]
    return [values]


def _node_rank() -> int:
    """torchrun's node rank (GROUP_RANK); 0 for one process."""
    return int(os.environ.get("GROUP_RANK", "0"))


class MetricsCallback(TrainerCallback):
    """Every rank counts tokens, samples and skips; at each log step the counts are summed over ranks and rank 0
    exports them and prints one progress line."""

    def __init__(self, metrics: TrainerMetrics, stage: str, preset: str, port: int,
                 peak_flops: float | None = None):
        self.m, self.stage, self.preset, self.port = metrics, stage, preset, port
        self.peak_flops = peak_flops  # one GPU's bf16 dense peak, FLOP/s (model/flops.py); None: no MFU
        self.pending = {"tokens": 0.0, "samples": 0.0, "flops": 0.0}
        self.total_flops = 0.0  # all ranks, every log so far
        self.pending_skips: dict[str, float] = {}
        self.last_time = time.monotonic()
        self.start_time = self.last_time
        self.server = None
        # this rank's step timing since the last log
        self.step_begin: float | None = None
        self.step_end: float | None = None
        self.timing = {"step": 0.0, "wait": 0.0, "steps": 0}

    def count_batch(self, tokens: int, samples: int, skipped: list[str], flops: float = 0.0):
        self.pending["tokens"] += tokens
        self.pending["samples"] += samples
        self.pending["flops"] += flops
        for reason in skipped:
            self.pending_skips[reason] = self.pending_skips.get(reason, 0) + 1

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:  # the stage's series come from rank 0 alone
            self.m.stage_info.labels(self.stage, self.preset).set(1)
            self.m.max_steps.labels(self.stage).set(state.max_steps)
        if state.is_local_process_zero and self.port:
            try:
                self.server = start_http_server(self.port, registry=self.m.registry)
            except OSError as e:
                from vita_api.errors import ConfigError
                raise ConfigError(f"cannot serve metrics on port {self.port} ({e}); pass --metrics_port with a "
                                  f"free port, or 0 to disable the endpoint") from e
            log.info("serving Prometheus metrics on :%d/metrics", self.port)

    def on_step_begin(self, args, state, control, **kw):
        now = time.monotonic()
        if self.step_end is not None:
            self.timing["wait"] += now - self.step_end
        self.step_begin = now

    def on_step_end(self, args, state, control, **kw):
        now = time.monotonic()
        if self.step_begin is not None:
            self.timing["step"] += now - self.step_begin
            self.timing["steps"] += 1
        self.step_end = now

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "eval_loss" in logs:
            # an evaluation's log (every rank gets one, so skipping the collectives here is the same on all): its
            # losses only. Rates measured over the evaluation alone would read 0 tokens/s until the next log.
            if state.is_world_process_zero:
                self._record_eval(state, logs)
            return
        reasons = DATA_ERROR_REASONS  # the same vector length on every rank, or the all_reduce would hang
        mine = self.pending["tokens"]
        summed = _all_reduce([self.pending["tokens"], self.pending["samples"], self.pending["flops"]]
                             + [self.pending_skips.get(r, 0) for r in reasons])
        tokens, samples, flops, skips = summed[0], summed[1], summed[2], dict(zip(reasons, summed[3:]))
        self.pending = {"tokens": 0.0, "samples": 0.0, "flops": 0.0}
        self.total_flops += flops
        self.pending_skips = {}
        now = time.monotonic()
        dt = max(now - self.last_time, 1e-9)
        self.last_time = now
        self._export_ranks(state, mine / dt)
        if not state.is_world_process_zero:
            return
        s = self.stage
        for key, gauge in (("loss", self.m.loss), ("learning_rate", self.m.learning_rate),
                           ("grad_norm", self.m.grad_norm)):
            if key in logs:
                gauge.labels(s).set(float(logs[key]))
        self.m.tokens.labels(s).inc(tokens)
        self.m.samples.labels(s).inc(samples)
        for reason, n in skips.items():
            if n:
                self.m.skipped.labels(s, reason).inc(n)
        self.m.tokens_per_second.labels(s).set(tokens / dt)
        self.m.samples_per_second.labels(s).set(samples / dt)
        if (mfu := self.mfu(flops, dt)) is not None:
            self.m.mfu.labels(s).set(mfu)
        self.m.step.labels(s).set(state.global_step)
        self.m.epoch.labels(s).set(state.epoch or 0.0)
        if torch.cuda.is_available():
            self.m.gpu_memory.labels(s).set(torch.cuda.max_memory_allocated())
        if "loss" in logs:
            elapsed = now - self.start_time
            eta = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
            log.info("[%s] step %d/%d loss %.4f lr %.2e grad_norm %s tokens/s %.0f eta %ds", s, state.global_step,
                     state.max_steps, logs["loss"], logs.get("learning_rate", 0.0),
                     f"{logs['grad_norm']:.3f}" if "grad_norm" in logs else "-", tokens / dt, eta)

    def mfu(self, flops: float, seconds: float) -> float | None:
        """`flops` of all ranks in `seconds`, over every GPU's peak; None without a known peak (CPU, a card not in
        model/flops.py's table) or before any work was counted."""
        if not self.peak_flops or not flops:
            return None
        gpus = torch.distributed.get_world_size() if _distributed() else 1
        return flops / max(seconds, 1e-9) / (self.peak_flops * gpus)

    def _record_eval(self, state, logs: dict) -> None:
        s = self.stage
        for key, value in logs.items():
            if key == "eval_loss" or key.startswith("eval_loss_"):
                self.m.eval_loss.labels(s, key.removeprefix("eval_loss").lstrip("_") or "all").set(float(value))
        log.info("[%s] step %d/%d eval_loss %.4f%s", s, state.global_step, state.max_steps, logs["eval_loss"],
                 "".join(f" {k.removeprefix('eval_')} {v:.4f}" for k, v in logs.items() if k.startswith("eval_loss_")))

    def _export_ranks(self, state, tokens_per_second: float) -> None:
        """Every rank's timing, tokens/s and memory, gathered; each node's first process exports its node's ranks."""
        steps = max(self.timing["steps"], 1)
        memory = float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else -1.0
        rank = torch.distributed.get_rank() if _distributed() else 0
        rows = _all_gather([rank, _node_rank(), self.timing["step"] / steps, self.timing["wait"] / steps,
                            tokens_per_second, memory])
        self.timing = {"step": 0.0, "wait": 0.0, "steps": 0}
        if not state.is_local_process_zero:
            return
        for r, node, step, wait, tps, mem in rows:
            if int(node) != _node_rank():
                continue
            labels = (self.stage, str(int(node)), str(int(r)))
            self.m.rank_step_seconds.labels(*labels).set(step)
            self.m.rank_data_wait_seconds.labels(*labels).set(wait)
            self.m.rank_tokens_per_second.labels(*labels).set(tps)
            if mem >= 0:  # no GPU, no GPU memory series
                self.m.rank_gpu_memory.labels(*labels).set(mem)

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.m.stage_info.labels(self.stage, self.preset).set(0)
        if self.server is not None:
            self.server[0].shutdown()
