"""Real Prometheus exposition from the trainer's metrics callback."""

import urllib.request
from types import SimpleNamespace

from vita_trainer.local import free_port
from vita_trainer.train.metrics import MetricsCallback, TrainerMetrics


def test_metrics_are_served_and_follow_prometheus_naming():
    port = free_port()
    cb = MetricsCallback(TrainerMetrics(), "stage-a", "vision_align", port)
    state = SimpleNamespace(is_world_process_zero=True, is_local_process_zero=True, max_steps=100, global_step=10,
                            epoch=0.5)
    cb.on_train_begin(None, state, None)
    try:
        for _ in range(2):  # two optimizer steps: this rank's step time and its wait between them
            cb.on_step_begin(None, state, None)
            cb.on_step_end(None, state, None)
        cb.count_batch(tokens=1200, samples=8, skipped=["corrupt_file", "corrupt_file"])
        cb.on_log(None, state, None, logs={"loss": 1.25, "learning_rate": 5e-4, "grad_norm": 0.5})
        # an evaluation's log in between leaves the rates of the training log (it trained no tokens itself)
        cb.on_log(None, state, None, logs={"eval_loss": 1.5, "eval_loss_text": 1.4})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        cb.on_train_end(None, state, None)
    assert 'vita_train_loss{stage="stage-a"} 1.25' in body
    assert 'vita_train_learning_rate{stage="stage-a"} 0.0005' in body
    assert 'vita_train_global_step{stage="stage-a"} 10.0' in body
    assert 'vita_train_tokens_total{stage="stage-a"} 1200.0' in body
    assert 'vita_train_eval_loss{modality="text",stage="stage-a"} 1.4' in body
    tokens_per_second = next(line for line in body.splitlines() if line.startswith("vita_train_tokens_per_second{"))
    assert float(tokens_per_second.split()[-1]) > 0
    assert 'vita_train_skipped_samples_total{reason="corrupt_file",stage="stage-a"} 2.0' in body
    assert 'vita_train_stage_info{preset="vision_align",stage="stage-a"} 1.0' in body
    assert "# TYPE vita_train_checkpoint_seconds histogram" in body
    # this rank's own series, labelled with its node and rank (one process: node 0, rank 0)
    for name in ("vita_train_rank_step_seconds", "vita_train_rank_data_wait_seconds",
                 "vita_train_rank_tokens_per_second"):
        assert f'{name}{{node_rank="0",rank="0",stage="stage-a"}}' in body, name


def test_metric_names_are_defined_once():
    names = TrainerMetrics().names()
    assert {"vita_train_tokens_total", "vita_train_checkpoint_seconds_bucket", "vita_train_loss"} <= names


def test_mfu_is_the_counted_model_flops_per_second_over_the_peak(monkeypatch):
    """vita_train_mfu: the FLOPs the collator counted since the last log, per second, over the GPU's peak (a
    made-up 1e12 FLOP/s card: this machine has none, and without a peak there is no series at all)."""
    import vita_trainer.train.metrics as metrics
    clock = iter([100.0, 104.0])  # the callback's start, then the log: 4 s apart
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock, 104.0))
    cb = MetricsCallback(TrainerMetrics(), "s", "multimodal_sft", 0, peak_flops=1e12)
    state = SimpleNamespace(is_world_process_zero=True, is_local_process_zero=True, max_steps=10, global_step=1,
                            epoch=0.1)
    cb.count_batch(tokens=100, samples=1, skipped=[], flops=1.2e12)
    cb.count_batch(tokens=100, samples=1, skipped=[], flops=0.4e12)
    cb.on_log(None, state, None, logs={"loss": 1.0})
    assert cb.m.mfu.labels("s")._value.get() == 1.6e12 / 4 / 1e12
    assert cb.total_flops == 1.6e12 and cb.mfu(cb.total_flops, 8.0) == 0.2
    no_peak = MetricsCallback(TrainerMetrics(), "s", "multimodal_sft", 0)
    no_peak.count_batch(tokens=100, samples=1, skipped=[], flops=1e12)
    no_peak.on_log(None, state, None, logs={"loss": 1.0})
    assert no_peak.mfu(1e12, 1.0) is None and "vita_train_mfu{" not in _exposition(no_peak)


def _exposition(cb) -> str:
    from prometheus_client import generate_latest
    return generate_latest(cb.m.registry).decode()


def test_model_flops_by_hand(tok):
    """The LLM's part by the usual formula, written out here for the tiny config: 6 x decoder weights per token,
    the head at labelled positions only (chunked loss), causal attention 4 x width per pair x 3 (trained); the
    vision tower of the 7B layout against 2 x parameters x tokens + bidirectional attention."""
    from vita_trainer.model.builder import tiny_config, vita_1p5_config
    from vita_trainer.model.flops import StepFlops, peak_tflops
    cfg = tiny_config(tok)  # hidden 64, 4 heads of 16, 2 key/value heads, MLP 256, 2 layers
    h, kv, ffn, layers, vocab = 64, 32, 256, 2, cfg.text_config.vocab_size
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * ffn + 2 * h
    tokens, labelled = 300, 40
    expected = 6 * (layers * per_layer * tokens + h * vocab * labelled) + 3 * 4 * h * layers * tokens * (tokens + 1) / 2
    sft = StepFlops.of(cfg, frozenset({"llm", "mm_projector", "audio_adapter"}))
    assert sft.sample(tokens, labelled) == expected
    # the same sample with the LLM frozen but the projector trained (stage 1): gradients pass through the LLM (4)
    align = StepFlops.of(cfg, frozenset({"mm_projector"}))
    assert align.sample(tokens, labelled) == 4 * (layers * per_layer * tokens + h * vocab * labelled) + \
        3 * 4 * h * layers * tokens * (tokens + 1) / 2
    # unchunked loss: the head at every position
    assert StepFlops.of(cfg, frozenset({"llm"}), chunked_loss=False).sample(tokens, labelled) - sft.sample(
        tokens, labelled) == 6 * h * vocab * (tokens - labelled)
    big = StepFlops.of(vita_1p5_config(), frozenset({"llm"}))
    # InternViT-300M: 304,012,288 parameters (the released weights layout), 448 px / 14 = 1024 patches + CLS
    vit_params, vit_tokens, width, vit_layers = 304_012_288, 1025, 1024, 24
    by_hand = 2 * vit_params * vit_tokens + 4 * width * vit_tokens ** 2 * vit_layers
    assert abs(big.tile_flops - by_hand) / by_hand < 0.03, (big.tile_flops, by_hand)
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H200 NVL") == 835.0
    assert peak_tflops("cpu") is None
