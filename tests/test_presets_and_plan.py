import pytest
from pydantic import ValidationError

from vita_api.errors import ConfigError
from vita_api.spec import VitaTrainingRun
from vita_api.plan import PathRoots, check_spec, stage_args, stage_inputs
from vita_api.presets import all_presets, get_preset, resolve_trainable

ROOTS = PathRoots(data="/data", checkpoints="/ckpt")


def run_spec(stages, **spec):
    return VitaTrainingRun.model_validate({
        "apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun", "metadata": {"name": "r"},
        "spec": {"model": {"base": "models/base"}, "data": {"registry": "registry.yaml"}, "output": "out",
                 "stages": stages, **spec}}).spec


def test_presets_cover_seed_and_reference_stages():
    names = set(all_presets())
    assert {"vision_align", "audio_align", "multimodal_sft", "vision_sft", "vision_task_sft", "audio_sft",
            "audio_ctc"} <= names
    assert get_preset("1.1").name == "vision_align" and get_preset("2.2").name == "audio_sft"
    assert get_preset("3").name == "multimodal_sft"
    assert get_preset("audio_ctc").objective == "ctc" and set(get_preset("audio_ctc").train) == {"audio_encoder",
                                                                                                 "ctc_head"}
    assert get_preset("vision_sft").module_lr == {"vision_tower": 2e-6}


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="vision_align"):
        get_preset("stage9")


def test_freeze_flags_override_the_preset():
    p = get_preset("multimodal_sft")
    assert resolve_trainable(p) == {"llm", "mm_projector", "audio_adapter"}
    assert resolve_trainable(p, unfreeze_vision_tower=True, freeze_audio_encoder=False) == {
        "llm", "mm_projector", "audio_adapter", "vision_tower", "audio_encoder"}
    assert resolve_trainable(p, tune_mm_mlp_adapter=True) == {"mm_projector"}
    with pytest.raises(ConfigError, match="trains nothing"):
        resolve_trainable(get_preset("vision_align"), freeze_mm_mlp_adapter=True)


def test_handoff_full_then_partial_stages():
    spec = run_spec([{"name": "a", "preset": "vision_align", "datasetUse": "img"},
                     {"name": "b", "preset": "vision_sft", "datasetUse": "img"},
                     {"name": "c", "preset": "vision_align", "datasetUse": "img"},
                     {"name": "d", "preset": "audio_align", "datasetUse": "aud"},
                     {"name": "e", "preset": "multimodal_sft", "datasetUse": "mm"}])
    assert stage_inputs(spec, 0, ROOTS) == ("/data/models/base", [])
    assert stage_inputs(spec, 1, ROOTS) == ("/data/models/base", ["/ckpt/out/a/mm_projector.bin"])
    assert stage_inputs(spec, 4, ROOTS) == ("/ckpt/out/b", ["/ckpt/out/c/mm_projector.bin",
                                                           "/ckpt/out/d/audio_adapter.bin"])
    args = stage_args(spec, 4, ROOTS)
    assert args[args.index("--output_dir") + 1] == "/ckpt/out/e"
    assert args[args.index("--deepspeed") + 1] == "zero3"
    assert args[args.index("--stage") + 1] == "multimodal_sft"


def test_semantic_problems_are_reported_before_training():
    spec = run_spec([{"name": "a", "preset": "nope", "datasetUse": "x"},
                     {"name": "a", "preset": "vision_align", "datasetUse": "x",
                      "args": {"freeze_mm_mlp_adapter": True}},
                     {"name": "b", "preset": "3", "datasetUse": "x", "args": {"output_dir": "/tmp"}}])
    problems = "\n".join(check_spec(spec))
    assert "unknown stage preset 'nope'" in problems
    assert "trains nothing" in problems
    assert "unique" in problems and "output_dir" in problems
    with pytest.raises(ConfigError):
        stage_args(spec, 0, ROOTS)


@pytest.mark.parametrize("bad", [
    {"stages": []},
    {"stages": [{"name": "Bad_Name", "preset": "3", "datasetUse": "x"}]},
    {"stages": [{"name": "a", "preset": "3"}]},
    {"stages": [{"name": "a", "preset": "3", "datasetUse": "x", "retryLimit": -1}]},
    {"stages": [{"name": "a", "preset": "3", "datasetUse": "x"}], "resources": {"gpusPerNode": 99}},
    {"stages": [{"name": "a", "preset": "3", "datasetUse": "x"}], "trainer": {"deepspeed": "zero4"}},
    {"stages": [{"name": "a", "preset": "3", "datasetUse": "x"}], "surprise": 1},
])
def test_schema_rejects_bad_specs(bad):
    with pytest.raises(ValidationError):
        run_spec(**bad) if "stages" not in bad else run_spec(bad.pop("stages"), **bad)


def test_handoff_follows_the_resolved_groups_not_the_preset():
    from vita_api.presets import saves_full_weights
    # multimodal_sft trains the LLM, but freeze_backbone makes this stage partial: the trainer writes
    # {group}.bin and the plan hands those files to the next stage (one rule for both sides)
    spec = run_spec([{"name": "a", "preset": "multimodal_sft", "datasetUse": "mm", "args": {"freeze_backbone": True}},
                     {"name": "b", "preset": "multimodal_sft", "datasetUse": "mm"}])
    assert not saves_full_weights(frozenset({"mm_projector", "audio_adapter"}))
    assert saves_full_weights(frozenset({"mm_projector"}), save_full_model=True)
    assert stage_inputs(spec, 1, ROOTS) == ("/data/models/base", ["/ckpt/out/a/audio_adapter.bin",
                                                                 "/ckpt/out/a/mm_projector.bin"])


def test_a_lora_stage_hands_its_merged_weights_to_the_next_stage():
    spec = run_spec([{"name": "a", "preset": "multimodal_sft", "datasetUse": "mm",
                      "args": {"lora_enable": "true", "freeze_backbone": True}},
                     {"name": "b", "preset": "multimodal_sft", "datasetUse": "mm"}])
    assert stage_inputs(spec, 1, ROOTS) == ("/ckpt/out/a", [])


@pytest.mark.parametrize("word", ["yes", "true", "t", "y", "1", "no", "false", "f", "n", "0", "True", "T", "NO"])
def test_boolean_args_read_as_the_trainer_reads_them(word):
    from transformers.hf_argparser import string_to_bool

    from vita_api.plan import trainable_groups
    from vita_api.presets import as_bool
    assert as_bool(word) is string_to_bool(word)
    spec = run_spec([{"name": "a", "preset": "multimodal_sft", "datasetUse": "mm", "args": {"freeze_backbone": word}}])
    assert ("llm" not in trainable_groups(spec, 0)) is string_to_bool(word)


def test_a_boolean_arg_that_is_not_one_is_a_spec_problem():
    spec = run_spec([{"name": "a", "preset": "multimodal_sft", "datasetUse": "mm",
                      "args": {"freeze_backbone": "maybe"}}])
    assert any("--freeze_backbone: 'maybe' is not a boolean" in p for p in check_spec(spec))


def test_tower_folders_go_to_the_stages_that_start_from_the_base():
    spec = run_spec([{"name": "align", "preset": "vision_align", "datasetUse": "a"},
                     {"name": "sft", "preset": "multimodal_sft", "datasetUse": "a"},
                     {"name": "more", "preset": "multimodal_sft", "datasetUse": "a"}])
    assert all("--mm_projector_type" not in stage_args(spec, i, ROOTS) for i in range(3))  # unset: the base's own
    spec.model.vision_tower, spec.model.audio_encoder = "models/InternViT", "/abs/whale"
    spec.model.mm_projector_type = "mlp2x_gelu"
    first, second, third = (stage_args(spec, i, ROOTS) for i in range(3))
    # align saves the projector only, so sft starts from the base too (plus mm_projector.bin)
    for argv in (first, second):
        assert argv[argv.index("--vision_tower") + 1] == "/data/models/InternViT"
        assert argv[argv.index("--audio_encoder") + 1] == "/abs/whale"
        assert argv[argv.index("--mm_projector_type") + 1] == "mlp2x_gelu"  # the trainer checks it against the base
    assert "--vision_tower" not in third and "--mm_projector_type" not in third  # starts from sft's full output


def test_the_prepared_base_folder_name_is_reserved():
    spec = run_spec([{"name": "base-model", "preset": "multimodal_sft", "datasetUse": "a"}])
    assert any("base-model" in p for p in check_spec(spec))


def test_job_settings_are_typed_stage_fields_not_trainer_args():
    """The job's deadline is the stage's activeDeadlineSeconds (the PyTorchJob's runPolicy, the TrainJob's spec); the
    old spelling in args is refused with where it moved, not passed to the trainer (its parser rejects it)."""
    from vita_operator.jobs.backends import job_backends
    from vita_trainer.train.arguments import parse
    spec = run_spec([{"name": "s", "preset": "multimodal_sft", "datasetUse": "a", "activeDeadlineSeconds": 86400,
                      "args": {"max_steps": 3}}])
    argv = stage_args(spec, 0, ROOTS)
    assert "--max_steps" in argv and not any("deadline" in a for a in argv)
    _, _, train_args, _ = parse(argv)
    assert train_args.max_steps == 3
    backends = job_backends()
    assert backends["pytorchjob"].build("r", "ns", spec, 0, 1)["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    assert backends["trainjob"].build("r", "ns", spec, 0, 1)["spec"]["activeDeadlineSeconds"] == 86400
    old = run_spec([{"name": "s", "preset": "multimodal_sft", "datasetUse": "a",
                     "args": {"active_deadline_seconds": 86400}}])
    assert any("stages[0].activeDeadlineSeconds" in p for p in check_spec(old))


def test_stage_resources_change_only_the_fields_they_set():
    """`{nodes: 2}` on a stage keeps the run's GPUs, selectors and tolerations, also after API-server defaulting:
    the CRD gives the stage's fields no defaults."""
    from vita_operator.crd import crd
    from vita_api.plan import stage_resources
    spec = run_spec([{"name": "a", "preset": "multimodal_sft", "datasetUse": "a", "resources": {"nodes": 2}}],
                    resources={"nodes": 1, "gpusPerNode": 8, "nodeSelector": {"gpu": "h100"},
                               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    r = stage_resources(spec, 0)
    assert (r.nodes, r.gpus_per_node, r.node_selector) == (2, 8, {"gpu": "h100"})
    assert r.tolerations[0].key == "nvidia.com/gpu"
    stage_schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "stages"]["items"]["properties"]["resources"]
    assert not [k for k, v in stage_schema["properties"].items() if "default" in v]
    assert stage_schema["properties"]["nodes"]["minimum"] == 1  # the run's constraints still apply


def test_a_ctc_stage_hands_on_its_encoder_but_not_its_ctc_head():
    """The CTC head exists only in CTC stages' models: handing ctc_head.bin to the next stage made it refuse the
    file ("keys do not exist in the model")."""
    spec = run_spec([{"name": "ctc", "preset": "audio_ctc", "datasetUse": "aud"},
                     {"name": "align", "preset": "audio_align", "datasetUse": "aud"},
                     {"name": "ctc2", "preset": "audio_ctc", "datasetUse": "aud"}])
    assert stage_inputs(spec, 1, ROOTS) == ("/data/models/base", ["/ckpt/out/ctc/audio_encoder.bin"])
    assert "/ckpt/out/ctc/ctc_head.bin" in stage_inputs(spec, 2, ROOTS)[1]  # another CTC stage keeps it


def test_every_cli_exits_2_on_a_bad_config_with_the_reason(capsys):
    """One exit-code convention (vita_api/termination.py): 2 for a VitaError, as the trainer in a pod."""
    from vita_trainer.cli import main as train_cli
    from vita_trainer.tools.data_cli import main as data_cli
    from vita_trainer.tools.model_cli import main as model_cli
    assert train_cli(["local", "/nonexistent/run.yaml"]) == 2
    assert data_cli(["check", "--registry", "/nonexistent/registry.yaml"]) == 2
    assert model_cli(["convert", "/nonexistent", "/nonexistent-out"]) == 2
    err = capsys.readouterr().err
    assert "run.yaml does not exist" in err and "registry.yaml does not exist" in err and "no config.json" in err
