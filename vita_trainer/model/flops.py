"""Model FLOPs of a training step, for MFU (model FLOPs utilisation): the trainer's `vita_train_mfu` and
bench/gpu_step.py.

Model FLOPs count the work a step needs, once. A matrix multiply costs 2 FLOPs per weight per token forward; the
backward pass costs 2 more for the input's gradient (needed wherever something trains before that module) and 2
for the weight's gradient (where the module trains): 6 per parameter per token for a trained module, 4 for a frozen
one that gradients pass through, 2 for a frozen one they never reach (the towers when only what follows them
trains). Attention scores and the weighted sum add 4 x width per (query, key) pair, causal within each sample for
the LLM, every pair within a tile or clip for the towers. The LM head counts at labelled positions only under the
chunked loss (at every position otherwise). Recomputed layers (activation checkpointing), padding and the masked
tiles a dense attention mask makes are not model FLOPs: they are what a hardware-FLOPs figure adds.

The towers' forward FLOPs come from PyTorch's FlopCounterMode on a meta-device copy (no memory, no weights): per
tile for the vision tower, and for the whale encoder a fit a + b·T + c·T² over three clip lengths (convolutions and
linear layers grow with T, attention with T²).
"""

from __future__ import annotations

from dataclasses import dataclass

from vita_api.constants import IGNORE_INDEX
from ..data.audio_tokens import audio_llm_tokens

# bf16 dense peak TFLOP/s (no sparsity) by card model, from NVIDIA's data sheets; the first name the device name
# contains wins, so the more specific names come first (torch names the SXM H100 "NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                    ("H100", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0))
CLIP_FIT_FRAMES = (200, 400, 800)  # fbank frames (2, 4, 8 s) the whale encoder's FLOPs are fitted on


def peak_tflops(device_name: str) -> float | None:
    """The card's bf16 dense peak by its name (torch.cuda.get_device_name), or None for a card not in the table."""
    return next((v for k, v in PEAK_BF16_TFLOPS if k in device_name), None)


def backward_factor(trains: bool, upstream_trains: bool) -> int:
    """FLOPs per parameter per token: 6 trained, 4 frozen with gradients passing through, 2 forward only."""
    return 6 if trains else 4 if upstream_trains else 2


@dataclass(frozen=True)
class StepFlops:
    """Per-part FLOP rates of one model for one set of trained groups; `sample()` gives a sample's model FLOPs."""
    decoder_params: int          # the LLM's decoder layers, all of them
    layers: int
    attention_width: int         # query heads x head dim
    head_params: int             # hidden x vocabulary
    llm_factor: int
    chunked_loss: bool
    tile_flops: float            # vision tower + projector, forward, per tile
    tile_factor: float           # vision tower forward-only (2N: 1) or trained (3x)
    projector_flops: float       # projector forward per tile (already in tile_flops when it shares the factor)
    projector_factor: float
    clip_fit: tuple[float, float, float]  # whale forward FLOPs per clip: a + b·T + c·T² (T in fbank frames)
    audio_factor: float
    adapter_flops_per_token: float
    adapter_factor: float

    adapter_stride: int

    def sample(self, tokens: int, labelled: int, tiles: int = 0, clip_frames: tuple[int, ...] = ()) -> float:
        """A sample of `tokens` tokens with `labelled` of them predicting a label, its image tiles and its clips'
        fbank frames."""
        llm = self.llm_factor * (self.decoder_params * tokens
                                 + self.head_params * (labelled if self.chunked_loss else tokens))
        # attention has no weights: a backward pass through it costs twice its forward
        llm += self.causal_attention(tokens) * (3 if self.llm_factor > 2 else 1)
        towers = tiles * (self.tile_factor * self.tile_flops + self.projector_factor * self.projector_flops)
        a, b, c = self.clip_fit
        for t in clip_frames:
            towers += self.audio_factor * (a + b * t + c * t * t)
            towers += self.adapter_factor * self.adapter_flops_per_token * audio_llm_tokens(t, self.adapter_stride)
        return llm + towers

    def causal_attention(self, tokens: int) -> float:
        """The LLM's attention over one sample, forward: causal pairs s(s+1)/2, 4 x width FLOPs each, every layer."""
        return 4 * self.attention_width * self.layers * tokens * (tokens + 1) / 2

    def processed(self, s: dict) -> float:
        """A processed sample's (data/processor.py): tiles made on the host or by the device pipeline."""
        if s.get("pixel_values") is not None:
            tiles = int(s["pixel_values"].shape[0])
        else:
            tiles = sum(1 if crop else cols * rows + thumb for cols, rows, thumb, crop in s.get("image_grids", []))
        return self.sample(len(s["input_ids"]), int((s["labels"][1:] != IGNORE_INDEX).sum()), tiles,
                           tuple(int(f.shape[0]) for f in s.get("audio_features", [])))

    @classmethod
    def of(cls, config, trained: frozenset[str], chunked_loss: bool = True, lora: bool = False) -> "StepFlops":
        """From a VitaConfig (a meta-device copy is built to count parameters and the towers' FLOPs)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from .modeling import VitaForCausalLM
        model = VitaForCausalLM.empty(config)
        text = config.text_config
        decoder = sum(p.numel() for p in model.language_model.get_decoder().layers.parameters())
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

        def forward_flops(fn, *args) -> float:
            with FlopCounterMode(display=False) as counter:
                fn(*args)
            return float(counter.get_total_flops())

        with torch.device("meta"):
            tile = torch.zeros(1, 3, config.tile_size, config.tile_size)
            vision = forward_flops(model.vision_tower, tile)
            projector = forward_flops(model.mm_projector, model.vision_tower(tile))
            clips = [forward_flops(model.audio_encoder, torch.zeros(1, t, config.audio_config["input_dim"]),
                                   torch.tensor([t])) for t in CLIP_FIT_FRAMES]
            hidden, _ = model.audio_encoder(torch.zeros(1, 400, config.audio_config["input_dim"]), torch.tensor([400]))
            adapter_tokens = model.audio_adapter(hidden, torch.tensor([hidden.shape[1]]))[0].shape[1]
            adapter = forward_flops(model.audio_adapter, hidden, torch.tensor([hidden.shape[1]])) / adapter_tokens
        fit = torch.linalg.solve(torch.tensor([[1.0, t, t * t] for t in CLIP_FIT_FRAMES], dtype=torch.float64),
                                 torch.tensor(clips, dtype=torch.float64)).tolist()
        llm_trains = "llm" in trained
        upstream = bool(trained & {"vision_tower", "mm_projector", "audio_encoder", "audio_adapter"}) or lora  # LoRA:
        # the LLM's weights are frozen but their inputs' gradients are computed
        # the towers' and the projector's factors are per forward FLOP: 1 (forward only), 2 (input gradients), 3
        return cls(decoder_params=decoder, layers=text.num_hidden_layers, adapter_stride=model.audio_adapter.stride,
                   attention_width=text.num_attention_heads * head_dim,
                   head_params=text.hidden_size * text.vocab_size,
                   llm_factor=backward_factor(llm_trains, upstream), chunked_loss=chunked_loss,
                   tile_flops=vision, tile_factor=backward_factor("vision_tower" in trained, False) / 2,
                   projector_flops=projector,
                   projector_factor=backward_factor("mm_projector" in trained, "vision_tower" in trained) / 2,
                   clip_fit=(fit[0], fit[1], fit[2]),
                   audio_factor=backward_factor("audio_encoder" in trained, False) / 2,
                   adapter_flops_per_token=adapter,
                   adapter_factor=backward_factor("audio_adapter" in trained, "audio_encoder" in trained) / 2)
