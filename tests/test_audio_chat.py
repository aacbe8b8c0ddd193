"""`vita-data audio-chat`: LibriSpeech-, Clotho-, Parquet- and manifest-shaped datasets (generated audio) become VITA
conversations that `vita-data check --decode` passes, sharded, resumable, deterministic, registered with the audio
mixtures; and `vita-data stats` counts their audio tokens."""

import json
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from tests import audio_corpora_fixtures as corpora
from vita_trainer.tools import audio_chat
from vita_trainer.tools.data_cli import main as data_main

PROMPTS = yaml.safe_load((Path(audio_chat.__file__).with_name("audio_prompts.yaml")).read_text(encoding="utf-8"))


def samples(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def convert(src, fmt, out, *extra) -> dict:
    return json.loads(_run(["audio-chat", str(src), "--format", fmt, "--out", str(out), "--json", *extra]))


def _run(argv) -> str:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert data_main(argv) == 0
    return buf.getvalue()


def test_librispeech_becomes_sentence_case_transcription_samples_and_skips_are_counted(tmp_path):
    src = corpora.librispeech(tmp_path / "ls", utterances=24)
    summary = convert(src, "librispeech", tmp_path / "out" / "ls.json", "--shard-size", "10",
                      "--registry", str(tmp_path / "registry.yaml"))
    # 24 beeps + 3 extra lines (27 clips): the 31 s one, the 0.2 s one and the line without a .flac are skipped.
    assert summary["clips"] == 27 and summary["samples"] == 24
    assert summary["skipped"] == {"missing": 1, "unreadable": 0, "too_short": 1, "too_long": 1, "no_text": 0}
    shards = [tmp_path / "out" / f"ls-0000{k}-of-00003.json" for k in range(3)]
    assert summary["shards"] == [str(s) for s in shards]
    got = [s for shard in shards for s in samples(shard)]
    assert len(got) == 24 and len({s["id"] for s in got}) == 24
    first = next(s for s in got if s["id"] == "ls-100-200-0000")
    # LibriSpeech writes "I HEAR ONE LOW BEEPS"; sentence case keeps the pronoun upper case.
    assert first["conversations"][1] == {"from": "gpt", "value": "I hear one low beeps"}
    assert first["audio"] == ["100/200/100-200-0000.flac"]
    human = first["conversations"][0]["value"]
    assert human.startswith("<audio>\n") and human.removeprefix("<audio>\n") in PROMPTS["asr"]["en"]
    assert len({s["conversations"][0]["value"] for s in got}) > 1  # the instructions vary

    registry = yaml.safe_load((tmp_path / "registry.yaml").read_text())
    assert registry["datasets"]["ls-00000"] == {"chat_path": "out/ls-00000-of-00003.json",
                                                "audio_root": "ls/LibriSpeech/train-clean-100", "task": "asr"}
    assert registry["mixtures"]["Pretrain_audio"] == ["ls-00000", "ls-00001", "ls-00002"]
    assert registry["mixtures"]["ls"] == ["ls-00000", "ls-00001", "ls-00002"]
    out = _run(["check", "--registry", str(tmp_path / "registry.yaml"), "--dataset_use", "Pretrain_audio",
                "--decode", "--workers", "1"])
    assert out.startswith("24 samples, 0 with problems")


def test_the_same_input_gives_the_same_bytes_and_an_interrupted_run_resumes(tmp_path, monkeypatch, capsys):
    src = corpora.librispeech(tmp_path / "ls", utterances=24, extra=False)
    whole = convert(src, "librispeech", tmp_path / "a" / "ls.json", "--shard-size", "10")
    real = audio_chat.convert_shard
    calls = []

    def dies_on_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(audio_chat, "convert_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        convert(src, "librispeech", tmp_path / "b" / "ls.json", "--shard-size", "10")
    assert sorted(p.name for p in (tmp_path / "b").glob("ls-*.json")) == ["ls-00000-of-00003.json"]
    monkeypatch.setattr(audio_chat, "convert_shard", real)
    first = (tmp_path / "b" / "ls-00000-of-00003.json").stat().st_mtime_ns
    resumed = convert(src, "librispeech", tmp_path / "b" / "ls.json", "--shard-size", "10")
    assert (tmp_path / "b" / "ls-00000-of-00003.json").stat().st_mtime_ns == first  # done: not written again
    assert resumed["samples"] == whole["samples"] == 24
    for k in range(3):
        name = f"ls-0000{k}-of-00003.json"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Other options onto the same shards would mix two conversions: refused, naming what to do.
    assert data_main(["audio-chat", str(src), "--format", "librispeech", "--out", str(tmp_path / "b" / "ls.json"),
                      "--shard-size", "10", "--seed", "7"]) != 0
    assert "other input or options" in capsys.readouterr().err


def test_clotho_captions_become_one_sample_each_with_the_captions_language(tmp_path):
    csv = corpora.clotho(tmp_path / "clotho", clips=3)
    summary = convert(csv, "clotho", tmp_path / "out" / "clotho.json", "--registry", str(tmp_path / "reg.yaml"))
    got = samples(tmp_path / "out" / "clotho.json")
    assert summary["samples"] == 15 and summary["audio_root"] == str(tmp_path / "clotho" / "development")
    assert [s["id"] for s in got[:5]] == [f"clotho-clip 0#{k}" for k in range(1, 6)]
    assert got[0]["audio"] == ["clip 0.wav"] and got[0]["conversations"][1]["value"] == "low beeps sound 0"
    english = {s["conversations"][0]["value"].removeprefix("<audio>\n") for s in got[:10]}
    chinese = {s["conversations"][0]["value"].removeprefix("<audio>\n") for s in got[10:]}
    assert english <= set(PROMPTS["caption"]["en"]) and chinese <= set(PROMPTS["caption"]["zh"])
    # An ASR dataset registered later comes first in Pretrain_audio; Pretrain_multimodal adds Pretrain_image's.
    reg = tmp_path / "reg.yaml"
    reg.write_text(yaml.safe_dump({**yaml.safe_load(reg.read_text()), "mixtures": {"Pretrain_image": []}}))
    convert(corpora.librispeech(tmp_path / "ls", utterances=4, extra=False), "librispeech",
            tmp_path / "out" / "zz_ls.json", "--registry", str(reg))
    mixtures = yaml.safe_load(reg.read_text())["mixtures"]
    assert mixtures["Pretrain_audio"] == ["zz_ls", "clotho"] and mixtures["Pretrain_multimodal"] == ["zz_ls", "clotho"]
    assert _run(["check", "--registry", str(reg), "--dataset_use", "Pretrain_audio", "--decode",
                 "--workers", "1"]).startswith("19 samples, 0 with problems")


@pytest.mark.parametrize("shape", ["parquet", "save_to_disk"])
def test_hugging_face_audio_datasets_are_decoded_into_files_once(tmp_path, shape):
    parquet, saved = corpora.hf_dataset(tmp_path / "hf", rows=6)
    src = parquet if shape == "parquet" else saved
    out = tmp_path / "out" / "cv.json"
    summary = convert(src, "parquet", out, "--task", "asr", "--registry", str(tmp_path / "reg.yaml"))
    got = samples(out)
    assert summary["samples"] == 6 and summary["skipped"]["too_short"] == 0
    clip = tmp_path / "out" / "cv_audio" / got[0]["audio"][0]
    assert clip.suffix == ".flac" and got[0]["conversations"][1]["value"] == "I hear one low beeps"
    original, _ = sf.read(tmp_path / "hf" / "clips" / "c0.flac")
    written, _ = sf.read(clip)
    assert (original == written).all()
    stamp = clip.stat().st_mtime_ns
    (tmp_path / "out" / "cv.json.stats.json").unlink()   # a fresh conversion of the same table
    convert(src, "parquet", out, "--task", "asr")
    assert clip.stat().st_mtime_ns == stamp
    assert _run(["check", "--registry", str(tmp_path / "reg.yaml"), "--dataset_use", "cv", "--decode",
                 "--workers", "1"]).startswith("6 samples, 0 with problems")


def test_a_manifest_of_spoken_questions_becomes_qa_samples_and_stats_count_audio_tokens(tmp_path):
    (tmp_path / "q").mkdir()
    rows = ["question_audio\tanswer"]
    for i in range(3):
        sf.write(tmp_path / "q" / f"q{i}.wav", corpora.beep_clip("high", 2, i), corpora.SR)
        rows.append(f"q/q{i}.wav\tTwo high beeps, number {i}.")
    (tmp_path / "qa.tsv").write_text("\n".join(rows) + "\n")
    convert(tmp_path / "qa.tsv", "manifest", tmp_path / "qa.json", "--task", "qa",
            "--registry", str(tmp_path / "reg.yaml"))
    got = samples(tmp_path / "qa.json")
    assert [s["conversations"] for s in got][0] == [{"from": "human", "value": "<audio>"},
                                                    {"from": "gpt", "value": "Two high beeps, number 0."}]
    assert got[2]["audio"] == ["q/q2.wav"]
    report = json.loads(_run(["stats", "--registry", str(tmp_path / "reg.yaml"), "--out", str(tmp_path / "st"),
                              "--workers", "1", "--json"]))
    # Whale: 100 fbank frames a second, x4 subsampling, the adapter's stride 2: 12.5 LLM tokens per second.
    seconds = [sf.info(str(tmp_path / "q" / f"q{i}.wav")).duration for i in range(3)]
    assert report["audio_tokens"]["clips"] == 3
    assert abs(report["audio_tokens"]["total"] - 12.5 * sum(seconds)) <= 3 * 2


def test_bad_input_names_the_file_and_the_fix(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("wav,words\na.wav,hello\n")
    assert data_main(["audio-chat", str(tmp_path / "m.csv"), "--format", "manifest", "--task", "asr",
                      "--out", str(tmp_path / "o.json")]) != 0
    err = capsys.readouterr().err
    assert "m.csv" in err and "--audio-column" in err
    assert data_main(["audio-chat", str(tmp_path / "m.csv"), "--format", "manifest", "--out",
                      str(tmp_path / "o.json")]) != 0
    assert "needs --task" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert data_main(["audio-chat", str(tmp_path / "empty"), "--format", "librispeech", "--out",
                      str(tmp_path / "o.json")]) != 0
    assert "trans.txt" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["audio_ctc", "audio_sft"])
def test_stage_two_trains_on_the_converted_data(tmp_path, demo_data, preset):
    """LibriSpeech- and Clotho-shaped data through audio-chat into Pretrain_audio, then stage 2 on it: the encoder's
    CTC alignment on the transcripts (2.1) and audio SFT (2.2). The loss falls. (The adapter-only preset on this
    tiny, randomly initialised LLM does not move in a test-sized run, converted data or not: a frozen LLM that knows
    no language gives the adapter nothing to steer; the demo trains it after a text stage.)"""
    from vita_trainer.train.main import main as train_main
    reg = tmp_path / "registry.yaml"
    convert(corpora.librispeech(tmp_path / "ls", utterances=48, extra=False), "librispeech", tmp_path / "ls.json",
            "--registry", str(reg))
    convert(corpora.clotho(tmp_path / "clotho", clips=4), "clotho", tmp_path / "clotho.json", "--registry", str(reg))
    summary = train_main([
        "--stage", preset, "--model_name_or_path", str(demo_data / "base_model"), "--data_registry", str(reg),
        "--dataset_use", "Pretrain_audio", "--output_dir", str(tmp_path / "run"), "--max_steps", "40",
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_strategy", "no",
        "--learning_rate", "3e-3", "--metrics_port", "0", "--model_max_length", "512", "--disable_tqdm", "True"])
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == 40 and all(loss > 0 for loss in losses)
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8, losses
