"""A real 2-process DeepSpeed ZeRO-3 run (torchrun, gloo, CPU) of the tiny pipeline through `vita-train local`."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vita_trainer.demo.run import build_run, prepare
from vita_trainer.local import free_port, run_local
from vita_api.module_groups import group_of
from vita_api.presets import get_preset

pytestmark = pytest.mark.slow


def small_run(out: Path, deepspeed="zero3", procs=2):
    run = build_run("zero3-test", 1.0, deepspeed, procs)
    run["spec"]["trainer"]["metricsPort"] = free_port()
    for stage in run["spec"]["stages"]:
        stage["args"].update(max_steps=8, logging_steps=1, per_device_train_batch_size=4, save_steps=4,
                             learning_rate=3e-3)
    # vision-align also writes full weights so that "frozen stays bit-identical" is checkable there too;
    # audio-align stays partial, so the next stage must pick up audio_adapter.bin (the partial handoff).
    run["spec"]["stages"][1]["args"]["save_full_model"] = True
    # stage 3 packs sequences into token-budget batches (rank 0 measures the lengths, the other rank receives
    # them), under ZeRO-3
    run["spec"]["stages"][3]["args"].update(pack_sequences=True, max_tokens_per_batch=2048)
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    return path, run


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3")
    prepare(out, small=True)
    path, run = small_run(out)
    summaries = run_local(path, nproc=2)
    return out, run, summaries


def test_every_stage_trains_its_preset_and_hands_off(zero3_run):
    out, run, summaries = zero3_run
    assert [s["stage"] for s in summaries] == ["base-lm", "vision-align", "audio-align", "multimodal"]
    for stage, s in zip(run["spec"]["stages"], summaries):
        expected = set(get_preset(stage["preset"]).train)
        if stage["args"].get("unfreeze_vision_tower"):
            expected.add("vision_tower")
        if stage["args"].get("freeze_audio_encoder") is False:
            expected.add("audio_encoder")
        assert set(s["trainable"]) == expected, stage["name"]
        losses = [loss for _, loss in s["losses"]]
        assert len(losses) == 8
        assert min(losses[-3:]) < losses[0], (stage["name"], losses)  # the loss decreases
    runs = out / "runs"
    assert (runs / "audio-align" / "audio_adapter.bin").is_file()
    assert not (runs / "audio-align" / "model.safetensors").exists()  # partial stage: adapter only
    assert (runs / "vision-align" / "model.safetensors").is_file()
    for stage in ("base-lm", "vision-align", "audio-align", "multimodal"):
        assert (runs / stage / "loss.png").stat().st_size > 1000


def test_frozen_parameters_are_bit_identical_and_trained_ones_move(zero3_run):
    out, _, summaries = zero3_run
    runs = out / "runs"
    before = {"base-lm": load_file(out / "base_model" / "model.safetensors"),
              "vision-align": load_file(runs / "base-lm" / "model.safetensors")}
    # multimodal starts from vision-align's full weights plus audio-align's adapter
    mm_in = load_file(runs / "vision-align" / "model.safetensors")
    mm_in.update(torch.load(runs / "audio-align" / "audio_adapter.bin", weights_only=True))
    before["multimodal"] = mm_in
    by_name = {s["stage"]: s for s in summaries}
    for stage, start in before.items():
        after = load_file(runs / stage / "model.safetensors")
        trained = set(by_name[stage]["trainable"])
        moved = {g: False for g in trained}
        for key, value in start.items():
            if key not in after:
                continue  # tied lm_head
            g = group_of(key)
            if g in trained:
                moved[g] |= not torch.equal(value, after[key])
            else:
                assert torch.equal(value, after[key]), f"{stage}: frozen {key} changed"
        assert all(moved.values()), (stage, moved)
    # audio-align: its adapter moved; the next stage really started from it
    adapter = torch.load(runs / "audio-align" / "audio_adapter.bin", weights_only=True)
    base = load_file(runs / "vision-align" / "model.safetensors")
    assert any(not torch.equal(v, base[k]) for k, v in adapter.items())


def test_finished_stages_are_skipped_on_rerun(zero3_run, capsys):
    out, _, summaries = zero3_run
    again = run_local(out / "run.yaml", nproc=2)
    assert [s["global_step"] for s in again] == [s["global_step"] for s in summaries]
    assert capsys.readouterr().out.count("already done, skipping") == 4


def test_checkpoints_are_zero3_shards_of_two_ranks(zero3_run):
    out, _, _ = zero3_run
    shards = out / "runs" / "multimodal" / "checkpoint-8" / "global_step8"
    for rank in (0, 1):
        assert (shards / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    state = torch.load(shards / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    assert state["ds_config"]["zero_optimization"]["stage"] == 3
    assert state["dp_world_size"] == 2


def test_stage_summary_records_outputs(zero3_run):
    out, _, _ = zero3_run
    done = json.loads((out / "runs" / "vision-align" / "vita_stage.json").read_text())
    assert done["preset"] == "vision_align" and done["global_step"] == 8 and done["full_model"] is True
