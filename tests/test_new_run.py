"""`vita-train new-run`: a run from a few answers, batch sizes from the memory model, and the run runs as written
under `vita-train local` (its CRD check on the real API server is in test_operator_apiserver.py)."""

import pytest
import yaml

from vita_api.errors import ConfigError
from vita_api.spec import VitaTrainingRun
from vita_trainer.cli import main as cli_main
from vita_trainer.tools.new_run import new_run, parser


def generate(*argv):
    run, notes = new_run(parser().parse_args(list(argv)))
    return VitaTrainingRun.model_validate(run), notes


def test_the_guides_cluster_gets_the_guides_batch():
    """4 nodes x 8 H100 (the guide's): the memory model fits far more than 8 rows of 6,200 tokens, so the guide's
    8 per GPU and 2 accumulation steps give its global batch of 8 x 2 x 32 = 512."""
    run, notes = generate("vita-h100", "--base", "models/vita-1.5-init", "--registry", "registries/vita.yaml",
                          "--nodes", "4", "--dataset-claim", "vita-datasets", "--checkpoint-claim", "vita-ckpt",
                          "--queue", "gpu-h100", "--backend", "trainjob")
    s = run.spec
    assert [(st.name, st.preset, st.dataset_use) for st in s.stages] == [
        ("vision-align", "vision_align", "Pretrain_image"), ("audio-align", "audio_align", "Pretrain_audio"),
        ("multimodal-sft", "multimodal_sft", "Pretrain_multimodal")]
    for st in s.stages:
        assert (st.args["per_device_train_batch_size"], st.args["gradient_accumulation_steps"]) == (8, 2)
    assert all("global batch 512 on 32 x h100" in n for n in notes)
    assert s.resources.gpus_per_node == 8 and s.resources.cpu == "96" and s.resources.memory == "1280Gi"
    assert s.volumes.dataset.claim_name == "vita-datasets" and s.scheduling.kueue_queue == "gpu-h100"
    assert s.trainer.backend == "trainjob" and s.resources.tolerations[0].key == "nvidia.com/gpu"


@pytest.mark.parametrize("card", ["a100-40gb", "l40s", "h200"])
def test_the_micro_batch_is_the_largest_power_of_two_the_memory_model_fits(card):
    from vita_trainer.tools.model_cli import inspect
    run, notes = generate("r", "--base", "b", "--registry", "r.yaml", "--card", card, "--stage",
                          "sft=multimodal_sft:mm")
    (st,) = run.spec.stages
    micro, acc = st.args["per_device_train_batch_size"], st.args["gradient_accumulation_steps"]
    gib = {"a100-40gb": 40.0, "l40s": 48.0, "h200": 141.0}[card]
    most = inspect("vita-1.5-7b", "multimodal_sft", 8, 6200, gib)["memory"]["max_tokens"]
    assert micro * 6200 <= most and (micro == 8 or 2 * micro * 6200 > most), (micro, most)
    assert micro * acc * 8 >= 512 and micro * (acc - 1) * 8 < 512  # the fewest steps that reach the global batch
    # the fewest checkpointed decoder layers that fit the micro-batch: with one layer fewer it would not
    policy = st.args["activation_checkpointing"]
    layers = {"none": 0, "all": 28}.get(policy, policy)
    from vita_trainer.model import memory
    from vita_trainer.model.builder import vita_1p5_config
    r = inspect("vita-1.5-7b", "multimodal_sft", 8, micro * 6200, gib)
    common = dict(total=r["total"], trainable=r["trainable"], gpus=8, tokens=micro * 6200, gpu_memory_gib=gib)
    shape = memory.LayerShape.of(vita_1p5_config().text_config)
    assert memory.estimate(shape, checkpointed_layers=layers, **common)["fits"]
    assert layers == 0 or not memory.estimate(shape, checkpointed_layers=layers - 1, **common)["fits"]
    assert policy != "all" or card != "h200"  # 141 GiB leaves room to recompute fewer layers


def test_a_card_too_small_for_one_row_says_what_to_change():
    with pytest.raises(ConfigError, match="does not fit a 24 GiB GPU with 1 GPUs"):
        generate("r", "--base", "b", "--registry", "r.yaml", "--card", "a10g", "--gpus-per-node", "1")


def test_bad_answers_are_named():
    with pytest.raises(ConfigError, match="NAME=PRESET:DATASET_USE"):
        generate("r", "--base", "b", "--registry", "r.yaml", "--stage", "vision_align")
    with pytest.raises(ConfigError, match="unknown stage preset 'stage9'"):
        generate("r", "--base", "b", "--registry", "r.yaml", "--stage", "a=stage9:x")
    with pytest.raises(ConfigError, match="give both --dataset-claim and --checkpoint-claim"):
        generate("r", "--base", "b", "--registry", "r.yaml", "--dataset-claim", "d")


@pytest.mark.slow
def test_a_generated_run_runs_unchanged_with_vita_train_local(tmp_path, capsys):
    from vita_trainer.demo.run import prepare
    prepare(tmp_path, small=True)
    out = tmp_path / "run.yaml"
    assert cli_main(["new-run", "tiny", "--base", "base_model", "--tokenizer", "base_model", "--registry",
                     "registry.yaml", "--gpus-per-node", "0", "--deepspeed", "none", "--global-batch", "16",
                     "--model-max-length", "512", "--stage", "align=vision_align:demo_image", "--stage",
                     "sft=multimodal_sft:demo_multimodal", "-o", str(out)]) == 0
    run = yaml.safe_load(out.read_text())
    assert run["spec"]["stages"][0]["args"]["per_device_train_batch_size"] == 8  # the guide's, on CPU
    assert run["spec"]["stages"][0]["args"]["gradient_accumulation_steps"] == 2  # 8 x 2 x 1 process = 16
    assert cli_main(["local", str(out)]) == 0
    for stage in ("align", "sft"):
        assert (tmp_path / "tiny" / stage / "vita_stage.json").is_file()


def test_export_after_an_adapter_only_stage_saves_the_full_model_too():
    run, notes = generate("r", "--base", "b", "--registry", "r.yaml", "--stage", "a=vision_align:x", "--export")
    assert run.spec.stages[0].args["save_full_model"] is True and run.spec.export is not None
    assert "stage a: saves the full model too, for spec.export" in notes
