"""Audio loading (soundfile), resampling to 16 kHz (torchaudio) and whale fbank features with global CMVN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def load_audio(path: str | Path) -> torch.Tensor:
    """Mono float waveform in [-1, 1] at 16 kHz, shape (samples,). A multi-channel file gives its channel 0, as
    Kaldi's fbank (which the reference calls on the whole file) takes it."""
    import soundfile as sf
    import torchaudio.functional as AF

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if sr != SAMPLE_RATE:
        wave = AF.resample(wave, sr, SAMPLE_RATE)
    return wave


def fbank(wave: torch.Tensor) -> torch.Tensor:
    """80-bin Kaldi fbank, 25 ms window, 10 ms shift, on int16-scaled audio as whale expects. (T, 80)."""
    import torchaudio.compliance.kaldi as kaldi

    return kaldi.fbank(wave.unsqueeze(0) * (1 << 15), num_mel_bins=NUM_MEL_BINS, frame_length=25.0,
                       frame_shift=10.0, dither=0.0, energy_floor=0.0, sample_frequency=SAMPLE_RATE)


def fbank_frames(num_samples: int) -> int:
    """Frame count of `fbank` for a clip (Kaldi snip_edges: 400-sample window, 160-sample hop)."""
    return 0 if num_samples < 400 else 1 + (num_samples - 400) // 160


class GlobalCMVN:
    """Global mean / inverse-std normalisation of fbank features.

    Loads a whale/WeNet `global_cmvn` JSON ({"mean_stat", "var_stat", "frame_num"}), Kaldi's text form of the
    same statistics (a 2 x (dim+1) matrix: sums and the frame count, then sums of squares), or our own
    {"mean": [...], "istd": [...]}.
    """

    def __init__(self, mean: torch.Tensor, istd: torch.Tensor,
                 checkpoint_buffers: tuple[torch.Tensor, torch.Tensor] | None = None):
        """`checkpoint_buffers`: the (mean, istd) buffers of an imported VITA-1.5 checkpoint as they were stored
        (a bf16 release rounds them), kept so that an export writes them back bit for bit."""
        self.mean, self.istd = mean.float(), istd.float()
        self.checkpoint_buffers = checkpoint_buffers

    @classmethod
    def identity(cls, dim: int = NUM_MEL_BINS) -> "GlobalCMVN":
        return cls(torch.zeros(dim), torch.ones(dim))

    @classmethod
    def load(cls, path: str | Path) -> "GlobalCMVN":
        from vita_api.errors import ConfigError
        text = Path(path).read_text()
        try:
            stats = json.loads(text)
        except json.JSONDecodeError:
            values = text.replace("[", " ").replace("]", " ").split()
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                raise ConfigError(f"{path}: neither JSON nor Kaldi text CMVN statistics") from None
            dim = len(numbers) // 2 - 1
            if dim < 1 or len(numbers) != 2 * (dim + 1):
                raise ConfigError(f"{path}: Kaldi CMVN statistics must be a 2 x (dim+1) matrix, "
                                  f"got {len(numbers)} values") from None
            stats = {"mean_stat": numbers[:dim], "frame_num": numbers[dim], "var_stat": numbers[dim + 1:2 * dim + 1]}
        if "mean" in stats:
            kept = stats.get("checkpoint_buffers")
            buffers = None if not kept else tuple(torch.tensor(kept[k], dtype=getattr(torch, kept["dtype"]))
                                                  for k in ("mean", "istd"))
            return cls(torch.tensor(stats["mean"]), torch.tensor(stats["istd"]), buffers)  # type: ignore[arg-type]
        n = float(stats["frame_num"])
        mean = torch.tensor(stats["mean_stat"], dtype=torch.float64) / n
        var = torch.tensor(stats["var_stat"], dtype=torch.float64) / n - mean ** 2
        return cls(mean, 1.0 / torch.sqrt(var.clamp_min(1e-20)))

    @classmethod
    def estimate(cls, feats: list[torch.Tensor]) -> "GlobalCMVN":
        allf = torch.cat(feats)
        return cls(allf.mean(0), 1.0 / allf.std(0).clamp_min(1e-5))

    def save(self, path: str | Path) -> None:
        out: dict = {"mean": self.mean.tolist(), "istd": self.istd.tolist()}
        if self.checkpoint_buffers is not None:  # bf16/fp16 values are exact as JSON floats
            mean, istd = self.checkpoint_buffers
            out["checkpoint_buffers"] = {"dtype": str(mean.dtype).removeprefix("torch."), "mean": mean.tolist(),
                                         "istd": istd.tolist()}
        Path(path).write_text(json.dumps(out))

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, istd) buffers a VITA-1.5 checkpoint stores: as imported, else the float32 statistics."""
        if self.checkpoint_buffers is not None:
            return self.checkpoint_buffers[0].clone(), self.checkpoint_buffers[1].clone()
        return self.mean.clone(), self.istd.clone()

    def save_wenet(self, path: str | Path) -> None:
        """The WeNet JSON form the reference reads (`is_json_cmvn`), as statistics of one frame."""
        mean, istd = self.mean.double(), self.istd.double()
        Path(path).write_text(json.dumps({"mean_stat": mean.tolist(), "var_stat": (1 / istd ** 2 + mean ** 2).tolist(),
                                          "frame_num": 1}))

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) * self.istd
