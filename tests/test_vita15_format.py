"""The vita15 chat format, rule by rule, on hand-written samples with the real Qwen2.5 vocabulary: the rendered
text, the ids and the labels (see vita_trainer/data/chat_format.py and docs/vita15-format.md)."""

import pytest

from vita_api.constants import IGNORE_INDEX
from vita_trainer.data.chat_format import AFTER_AUDIO, AFTER_TEXT, FORMATS, INSERTED, get_format
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import Registry
from vita_trainer.data.sample import parse_sample
from vita_api.errors import DataError

IMG, AUD = "<|vita_image|>", "<|vita_audio|>"


@pytest.fixture(scope="module")
def qwen():
    from vita_trainer.data.tokenizer import qwen2p5_tokenizer
    return qwen2p5_tokenizer()


@pytest.fixture(scope="module")
def media():
    from vita_trainer.model.builder import vita_1p5_config
    return MediaSpec.from_config(vita_1p5_config())


def proc(qwen, media, tmp_path, fmt="vita15", **kw):
    reg = Registry(image_folders={"coco": str(tmp_path / "coco"), "ocr": str(tmp_path / "ocr")},
                   base_dir=str(tmp_path))
    return SampleProcessor(qwen, media, reg, 100_000, chat_format=fmt, **kw)


def render(p, raw, tiles=(), frames=0, audio=()):
    s = parse_sample(raw, file="x.json", index=0)
    ids, labels = p.layout(s, "x.json", list(tiles), frames, list(audio))
    text = p.tok.decode(ids)
    trained = p.tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    return text, trained, ids, labels


def collapse(text, token):
    """Show each run of a media token once, as `token*N`."""
    import re
    return re.sub(f"(?:{re.escape(token)})+", lambda m: f"{token}*{len(m.group(0)) // len(token)}", text)


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


def test_reply_states_and_no_newline_after_the_last_turn(qwen, media, tmp_path):
    p = proc(qwen, media, tmp_path)
    raw = {"id": "a", "audio": ["q.wav"], "conversations": conv("Hi", "Hello!", "<audio>\nWhat did I say?", "Hi.")}
    text, trained, ids, labels = render(p, raw, audio=[200])
    system = FORMATS["vita15"].system_prompts["language"]  # audio-only samples use the language prompt
    n_audio = media.audio_tokens_fn(200)
    assert collapse(text, AUD) == (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n{AFTER_TEXT}Hello!<|im_end|>\n"
        f"<|im_start|>user\n{AUD}*{n_audio}What did I say?<|im_end|>\n"   # <audio>\n -> <audio>
        f"<|im_start|>assistant\n{AFTER_AUDIO}Hi.<|im_end|>")               # no trailing newline
    assert trained == f"{AFTER_TEXT}Hello!<|im_end|>{AFTER_AUDIO}Hi.<|im_end|>"  # the state symbols are trained
    assert ids[-1] == qwen.convert_tokens_to_ids("<|im_end|>") and labels[-1] == ids[-1]
    chatml = render(proc(qwen, media, tmp_path, "chatml"), raw, audio=[200])[0]
    assert chatml.endswith("Hi.<|im_end|>\n") and AFTER_TEXT not in chatml


def test_inserted_id_marks_its_reply(qwen, media, tmp_path):
    raw = {"id": "n", "audio": ["a.wav", "b.wav"], "inserted_id": 3,
           "conversations": conv("<audio>\nOne", "1", "<audio>\nTwo", "2")}
    _, trained, _, _ = render(proc(qwen, media, tmp_path), raw, audio=[100, 100])
    assert trained == f"{AFTER_AUDIO}1<|im_end|>{INSERTED}2<|im_end|>"
    with pytest.raises(DataError, match="inserted_id") as e:
        parse_sample({**raw, "inserted_id": 2}, file="x.json", index=0)  # a human turn
    assert e.value.field == "inserted_id"


def test_image_text_rewriting_and_the_image_prompt(qwen, media, tmp_path):
    p = proc(qwen, media, tmp_path)
    # LLaVA's trailing placeholder moves to the front, the turn is stripped, the tiles are followed by "\n"
    raw = {"id": "i", "set": "coco", "image": "1.jpg",
           "conversations": conv("Describe it. \n<image>", "A cat.\n\nIt sleeps.\n\nThe end.")}
    text, trained, _, _ = render(p, raw, tiles=[2])
    user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert collapse(user, IMG) == f"{IMG}*512\nDescribe it."
    assert FORMATS["vita15"].system_prompts["image"] in text
    # every "\n\n" -> "\n", replies included
    assert trained == f"{AFTER_TEXT}A cat.\nIt sleeps.\nThe end.<|im_end|>"
    # the usual leading "<image>\n" gives the same text: tiles, one "\n", the question
    lead = {**raw, "conversations": conv("<image>\nDescribe it.", "A cat.")}
    user = render(p, lead, tiles=[2])[0].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert collapse(user, IMG) == f"{IMG}*512\nDescribe it."


def test_each_image_is_followed_by_a_newline_and_video_uses_its_prompt(qwen, media, tmp_path):
    p = proc(qwen, media, tmp_path)
    two = {"id": "m", "set": ["coco", "ocr"], "image": ["1.jpg", "2.jpg"],
           "conversations": conv("<image><image>Compare.", "Same.")}
    user = render(p, two, tiles=[1, 1])[0].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert collapse(user, IMG) == f"{IMG}*256\n{IMG}*256\nCompare."
    video = {"id": "v", "video": "v.mp4", "conversations": conv("<video>\nWhat happens?", "Rain.")}
    text = render(p, video, frames=4)[0]
    assert FORMATS["vita15"].system_prompts["video"] in text
    assert collapse(text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0], IMG) == f"{IMG}*1024\nWhat happens?"


def test_end_tag_false_leaves_the_last_im_end_off_and_untrained(qwen, media, tmp_path):
    for fmt in ("vita15", "chatml"):
        raw = {"id": "e", "end_tag": False, "conversations": conv("Count", "1 2 3")}
        text, trained, ids, labels = render(proc(qwen, media, tmp_path, fmt), raw)
        assert text.endswith("1 2 3") and trained.endswith("1 2 3") and "<|im_end|>" not in trained
    with pytest.raises(DataError, match="end_tag"):
        parse_sample({**raw, "end_tag": "no"}, file="x.json", index=0)


def test_list_valued_set_resolves_one_folder_per_image(qwen, media, tmp_path):
    p = proc(qwen, media, tmp_path)
    for folder, name in (("coco", "1.jpg"), ("ocr", "2.jpg")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    s = parse_sample({"id": "m", "set": ["coco", "ocr"], "image": ["1.jpg", "2.jpg"],
                      "conversations": conv("<image><image>Compare.", "Same.")}, file="x.json", index=0)
    assert p.image_paths(s, "x.json") == [tmp_path / "coco" / "1.jpg", tmp_path / "ocr" / "2.jpg"]
    with pytest.raises(DataError, match="one set name per image|a list of 1"):
        parse_sample({"id": "m", "set": ["coco"], "image": ["1.jpg", "2.jpg"],
                      "conversations": conv("<image><image>x", "y")}, file="x.json", index=0)


def test_system_prompts_are_settable_per_modality(qwen, media, tmp_path):
    p = proc(qwen, media, tmp_path, system_prompts={"image": "IMAGE PROMPT", "language": None})
    img = {"id": "i", "set": "coco", "image": "1.jpg", "conversations": conv("<image>\nq", "a")}
    assert "<|im_start|>system\nIMAGE PROMPT<|im_end|>" in render(p, img, tiles=[1])[0]
    lang = render(p, {"id": "t", "conversations": conv("q", "a")})[0]
    assert FORMATS["vita15"].system_prompts["language"] in lang  # unset ones keep the format's text
    one = proc(qwen, media, tmp_path, system_prompt="ALL")
    assert "system\nALL<|im_end|>" in render(one, img, tiles=[1])[0]


def test_square_still_tiles_under_vita15_and_the_reference_name_is_an_alias(qwen, media, tmp_path):
    assert proc(qwen, media, tmp_path, "vita15", image_aspect_ratio="square").dynamic
    assert not proc(qwen, media, tmp_path, "chatml", image_aspect_ratio="square").dynamic
    assert get_format("qwen2p5_instruct") is FORMATS["vita15"]
    from vita_api.errors import ConfigError
    with pytest.raises(ConfigError, match="chat format"):
        get_format("llava_v1")
