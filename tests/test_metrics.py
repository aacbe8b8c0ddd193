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
