from vita_api.constants import IGNORE_INDEX
from vita_trainer.data.chat_format import FORMATS
from vita_trainer.data.template import render_segments, tokenize_segments


def render_text(turns, system, **options):
    return "".join(s.text for s in render_segments(turns, system, **options))


def test_multi_turn_template_exact_string():
    text = render_text([("user", "Hi"), ("assistant", "Hello!"), ("user", "Colour?"), ("assistant", "red")], "SYS")
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                    "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n")


def test_system_prompt_depends_on_modality():
    chatml = FORMATS["chatml"]
    assert "see images" in chatml.system_prompt("image") and "see images" not in chatml.system_prompt("language")
    assert chatml.system_prompt("image", {"image": "mine"}) == "mine"


def test_label_mask_positions_train_only_replies_and_im_end():
    # A character-level "tokenizer" makes positions easy to reason about.
    encode = lambda s: [ord(c) for c in s]  # noqa: E731
    segs = render_segments([("user", "q"), ("assistant", "ab"), ("user", "r"), ("assistant", "c")], "S")
    ids, labels = tokenize_segments(segs, encode)
    text = "".join(chr(i) for i in ids)
    trained = "".join(chr(label) for label in labels if label != IGNORE_INDEX)
    assert trained == "ab<|im_end|>c<|im_end|>"
    first = text.index("assistant\nab") + len("assistant\n")
    assert labels[first - 1] == IGNORE_INDEX and labels[first] == ord("a")
    # the newline after <|im_end|> and the next user turn are masked
    after = first + len("ab<|im_end|>")
    assert labels[after] == IGNORE_INDEX


def test_label_mask_with_real_tokenizer(tok):
    segs = render_segments([("user", "hello"), ("assistant", "world")], "S")
    ids, labels = tokenize_segments(segs, lambda s: tok(s, add_special_tokens=False)["input_ids"])
    kept = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(kept) == "world<|im_end|>"
    assert kept[-1] == tok.convert_tokens_to_ids("<|im_end|>")
