import numpy as np
import pytest
import torch
from PIL import Image

from vita_trainer.data import audio
from vita_trainer.data.image import choose_grid, tile_image
from vita_trainer.data.video import sample_indices
from vita_trainer.data.audio_tokens import audio_llm_tokens
from vita_trainer.model.audio_encoder import AudioAdapter, WhaleEncoder


@pytest.mark.parametrize("size,grid,tiles", [
    ((448, 448), (1, 1), 1),          # square: one tile, no thumbnail
    ((896, 448), (2, 1), 3),          # 2:1 -> 2 tiles + thumbnail
    ((448, 1344), (1, 3), 4),         # 1:3 -> 3 tiles + thumbnail
    ((1792, 1344), (4, 3), 13),       # 4:3 large -> 12 tiles + thumbnail
    ((5000, 400), (12, 1), 13),       # extreme 12.5:1 -> widest grid
])
def test_tile_count_for_known_aspect_ratios(size, grid, tiles):
    assert choose_grid(*size, tile_size=448) == grid
    out = tile_image(Image.new("RGB", size), 448)
    assert len(out) == tiles and all(t.size == (448, 448) for t in out)


def test_no_patch_gives_single_tile():
    assert len(tile_image(Image.new("RGB", (1792, 1344)), 448, dynamic=False)) == 1


@pytest.mark.parametrize("seconds,frames,tokens", [(1.0, 98, 12), (7.3, 728, 91)])
def test_fbank_frames_and_audio_tokens(seconds, frames, tokens):
    wave = torch.randn(int(seconds * 16000)) * 0.1
    feats = audio.fbank(wave)
    assert feats.shape == (frames, 80)
    assert audio.fbank_frames(wave.numel()) == frames
    assert audio_llm_tokens(frames, adapter_stride=2) == tokens       # ~12.5 tokens/s
    assert audio_llm_tokens(frames, adapter_stride=1) > tokens         # cnn adapter: no stride
    # the formula is the real module's output length
    enc, ad = WhaleEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32), AudioAdapter(16, 8, stride=2)
    h, lens = enc(feats[None], torch.tensor([frames]))
    out, out_lens = ad(h, lens)
    assert out.shape[1] == tokens and int(out_lens[0]) == tokens


def test_a_stereo_file_gives_its_channel_0_as_kaldi_fbank_takes_it(tmp_path):
    import soundfile as sf
    left, right = 0.1 * np.sin(np.arange(16000) / 5), 0.3 * np.sin(np.arange(16000) / 3)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1).astype("float32"), 16000)
    wave = audio.load_audio(tmp_path / "stereo.wav")
    assert torch.equal(wave, torch.from_numpy(sf.read(tmp_path / "stereo.wav", dtype="float32")[0][:, 0].copy()))


def test_resample_to_16k(media_dir):
    wave = audio.load_audio(media_dir / "8k.wav")  # 1 s at 8 kHz
    assert wave.numel() == 16000


def test_cmvn_from_whale_stats(tmp_path):
    import json
    (tmp_path / "global_cmvn").write_text(json.dumps({"mean_stat": [2.0] * 80, "var_stat": [8.0] * 80,
                                                     "frame_num": 2}))
    cmvn = audio.GlobalCMVN.load(tmp_path / "global_cmvn")
    out = cmvn(torch.full((3, 80), 1.0))
    # mean 1, var 4-1=3 -> (1-1)/sqrt(3) = 0
    assert torch.allclose(out, torch.zeros(3, 80))
    assert torch.allclose(cmvn.istd, torch.full((80,), 1 / np.sqrt(3.0)))


# Hand-computed from the reference's rule (VITA-1.5's video loader; docs/vita15-format.md, "video frames"):
# stride = round(fps / 3), range(0, frames, stride), then numpy.linspace(0, n - 1, 16 or 4, dtype=int) positions
# when above 16 or below 4.
@pytest.mark.parametrize("frames,fps,expected", [
    (300, 30, [0, 10, 30, 50, 70, 90, 110, 130, 150, 170, 190, 210, 230, 250, 270, 290]),  # 30 -> 16
    (10, 30, [0, 0, 0, 0]),                                     # stride 10: one frame, repeated to 4
    (100, 25, list(range(0, 100, 8))),                          # stride round(8.33) = 8: 13 frames, all
    (60, 10, [0, 3, 6, 9, 15, 18, 21, 24, 30, 33, 36, 39, 45, 48, 51, 57]),  # stride 3: 20 -> 16
    (20, 7.5, list(range(0, 20, 2))),                           # round(2.5) = 2 (Python rounds half to even)
    (20, 24, [0, 0, 8, 16]),                                    # stride 8: 3 frames -> 4
    (5, 1, [0, 1, 2, 3, 4]),                                    # the reference's stride 0 (a crash) is 1 here
])
def test_video_frames_follow_the_reference_rule(frames, fps, expected):
    assert sample_indices(frames, fps) == expected


def test_tiles_to_tensor_normalises_like_the_formula():
    from vita_trainer.data.image import IMAGENET_MEAN, IMAGENET_STD, tiles_to_tensor
    tiles = [Image.fromarray((np.random.default_rng(i).random((8, 8, 3)) * 255).astype("uint8")) for i in range(3)]
    ref = (np.stack([np.asarray(t, dtype=np.float32) / 255 for t in tiles]) - np.array(IMAGENET_MEAN, "float32")) \
        / np.array(IMAGENET_STD, "float32")
    assert torch.allclose(tiles_to_tensor(tiles), torch.from_numpy(ref).permute(0, 3, 1, 2), atol=1e-5)
