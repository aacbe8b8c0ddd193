import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/vita/torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    from vita_trainer.data.tokenizer import train_tiny_tokenizer
    corpus = ["What color is the shape? red green blue circle square", "hello world, how are you?",
              "You are an AI robot and your name is VITA."] * 20
    return train_tiny_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_cfg(tok):
    from vita_trainer.model.builder import tiny_config
    return tiny_config(tok)


@pytest.fixture
def media_dir(tmp_path):
    """A folder with a good image, a good 1 s clip, a 0.3 s clip, a corrupt image and a zero-byte wav."""
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    Image.new("RGB", (96, 32), "blue").save(tmp_path / "wide.png")
    sf.write(tmp_path / "one.wav", (0.1 * np.sin(np.arange(16000) / 5)).astype("float32"), 16000)
    sf.write(tmp_path / "short.wav", (0.1 * np.sin(np.arange(4800) / 5)).astype("float32"), 16000)
    sf.write(tmp_path / "8k.wav", (0.1 * np.sin(np.arange(8000) / 5)).astype("float32"), 8000)
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    (tmp_path / "empty.wav").write_bytes(b"")
    return tmp_path


def conv(*pairs):
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out
