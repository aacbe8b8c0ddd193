"""VitaForCausalLM: an HF causal LM with a vision tower + projector and a whale audio encoder + adapter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils.generic import is_flash_attention_requested

from vita_api.module_groups import group_attr
from .audio_encoder import AudioAdapter, WhaleEncoder
from .configuration import VitaConfig
from .projector import build_projector
from .device_checks import raise_failed
from .splice import scatter_media
from .varlen_attention import NAME as VARLEN_BACKEND
from .vision import VisionTower
from .vision_families import family_of

# What the packed collator adds for flash attention's varlen kernel (data/collator.py: varlen_boundaries).
VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class VitaForCausalLM(PreTrainedModel):
    config_class = VitaConfig
    base_model_prefix = "vita"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # The LLM's and the whale's blocks; the vision family's is added per model (vision_families.py).
    _no_split_modules = ["Qwen2DecoderLayer", "EncoderBlock"]

    # Set by the trainer (--chunked_loss): training losses without the batch's full fp32 logits.
    chunked_loss = False
    # Set by the trainer under ZeRO-3: lm_head calls per micro-batch, the same on every step and rank
    # (chunked_loss.chunk_slices); None: as many as the labelled positions need.
    lm_head_calls: int | None = None
    lm_head_chunk_tokens: int | None = None  # positions per call at most (--lm_head_chunk_tokens)

    def __init__(self, config: VitaConfig):
        super().__init__(config)
        self._no_split_modules = [*type(self)._no_split_modules,
                                  family_of(config.vision_config.model_type).layer_class]
        llm_dim = config.text_config.hidden_size
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.vision_tower = VisionTower(config.vision_config, config.downsample_ratio, config.vision_feature_scale)
        self.mm_projector = build_projector(config.mm_projector_type, self.vision_tower.out_dim, llm_dim)
        a = config.audio_config
        self.audio_encoder = WhaleEncoder(**a)
        self.audio_adapter = AudioAdapter(a["d_model"], llm_dim, stride=a["adapter_stride"], kernel=a["adapter_kernel"])
        # CTC head for the audio-encoder stage (reference stage 2.1, never released there).
        self.ctc_head = nn.Linear(a["d_model"], config.ctc_vocab_size) if config.ctc_vocab_size else None
        # Liger's fused linear cross-entropy (model/liger.py, --use_liger_kernel); a submodule once set, without
        # parameters of its own
        self.fused_loss: nn.Module | None = None
        self.post_init()

    # Set by the trainer (--activation_checkpointing): which LLM decoder layers checkpoint when checkpointing is on
    # (model/checkpointing.py); the encoders' layers keep transformers' setting.
    checkpoint_policy: str | int = "all"

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint,
                                    every_n_layers: int = 1):
        from .checkpointing import checkpointed
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)
        if enable:
            layers = self.language_model.get_decoder().layers
            for layer, on in zip(layers, checkpointed(self.checkpoint_policy, len(layers))):
                layer.gradient_checkpointing = on

    def group_module(self, group: str) -> nn.Module | None:
        return getattr(self, group_attr(group))

    def _init_weights(self, module):
        # Sub-models initialise themselves and our encoder layers keep PyTorch's default init; only a CTC head
        # added to a loaded checkpoint (missing weights) needs an explicit init.
        if module is getattr(self, "ctc_head", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # --- encoders ----------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(self.vision_tower(pixel_values))

    def encode_audio(self, feats: torch.Tensor, lengths: torch.Tensor):
        hidden, lens = self.audio_encoder(feats, lengths)
        out, out_lens = self.audio_adapter(hidden, lens)
        return out, out_lens

    def _dummy_pixels(self, device) -> torch.Tensor:
        return torch.zeros(1, 3, self.config.tile_size, self.config.tile_size, device=device)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values=None, audio_features=None,
                     audio_feature_lengths=None) -> torch.Tensor:
        """Token embeddings with image-tile and audio embeddings written into their slots.

        Every call runs both encoders, on a dummy tile or clip when the batch has none, and adds a
        zero-weighted term: under ZeRO-3 every rank must run every module in the same order.
        """
        embeds = self.get_input_embeddings()(input_ids)
        device = embeds.device
        has_images = pixel_values is not None and pixel_values.shape[0] > 0
        img = self.encode_images(pixel_values if has_images else self._dummy_pixels(device))
        if has_images:
            embeds = scatter_media(embeds, input_ids, self.config.image_token_id, img.flatten(0, 1), "image")
        else:
            embeds = embeds + 0.0 * img.sum()

        has_audio = audio_features is not None and audio_features.shape[0] > 0
        if not has_audio:
            audio_features = torch.zeros(1, 64, self.config.audio_config["input_dim"], device=device)
            audio_feature_lengths = torch.tensor([64], device=device)
        hidden, lens = self.encode_audio(audio_features, audio_feature_lengths)
        if has_audio:
            embeds = scatter_media(embeds, input_ids, self.config.audio_token_id, hidden, "audio", lens)
        else:
            embeds = embeds + 0.0 * hidden.sum()
        if self.ctc_head is not None and self.training:
            # Keep the CTC head in the graph for ZeRO-3 even in stages that do not use it.
            embeds = embeds + 0.0 * self.ctc_head.weight.sum()
        return embeds

    # The reference's Trainer puts the whole model in train mode each step, so a frozen whale encoder still runs its
    # dropout (and dynamic chunks); True keeps a frozen encoder in eval mode instead (--frozen_audio_encoder_eval).
    frozen_audio_encoder_eval = False

    def train(self, mode: bool = True):
        super().train(mode)
        encoder = self.audio_encoder
        if (mode and self.frozen_audio_encoder_eval and encoder is not None
                and not any(p.requires_grad for p in encoder.parameters())):
            encoder.eval()
        return self

    def ctc_loss(self, audio_features, audio_feature_lengths, ctc_targets, ctc_target_lengths,
                 num_items_in_batch=None):
        """CTC on the audio encoder's output (blank = 0; targets are UTF-8 bytes + 1), each sample's loss per target
        byte. With the Trainer's `num_items_in_batch` (the samples of the whole accumulation window on every rank,
        see the collator) the sum is divided by it, so the gradient is the same for any split into micro-batches
        and ranks; the Trainer then neither divides by the accumulation steps nor lets DDP's mean shrink it."""
        from transformers.modeling_outputs import CausalLMOutput
        hidden, lens = self.audio_encoder(audio_features, audio_feature_lengths)
        logp = self.ctc_head(hidden).float().log_softmax(-1).transpose(0, 1)
        per_sample = nn.functional.ctc_loss(logp, ctc_targets, lens, ctc_target_lengths, blank=0, zero_infinity=True,
                                            reduction="none") / ctc_target_lengths.clamp(min=1).to(logp.dtype)
        loss = per_sample.mean() if num_items_in_batch is None else per_sample.sum() / num_items_in_batch
        return CausalLMOutput(loss=loss, logits=None)

    def tiles(self, pixel_values=None, images=None, image_sizes=None, image_grids=None):
        """Normalised tiles: as the host made them (pixel_values), or made here from decoded uint8 images (the
        device image pipeline, model/image_tiles.py)."""
        if images is None:
            return pixel_values
        from .image_tiles import tiles_from_images
        return tiles_from_images(images, image_sizes, image_grids, self.config.tile_size, self.config.image_mean,
                                 self.config.image_std)

    def forward(self, input_ids=None, attention_mask=None, labels=None, pixel_values=None, audio_features=None,
                audio_feature_lengths=None, position_ids=None, ctc_targets=None, ctc_target_lengths=None,
                images=None, image_sizes=None, image_grids=None, **kwargs):
        if ctc_targets is not None:
            return self.ctc_loss(audio_features, audio_feature_lengths, ctc_targets, ctc_target_lengths,
                                 kwargs.get("num_items_in_batch"))
        pixel_values = self.tiles(pixel_values, images, image_sizes, image_grids)
        embeds = self.embed_inputs(input_ids, pixel_values, audio_features, audio_feature_lengths)
        attention_mask = self._attention_inputs(attention_mask, kwargs)
        if attention_mask is None and (position_ids is not None or VARLEN_KWARGS[0] in kwargs):
            kwargs["use_cache"] = False  # rows by boundaries or position ids: training, no cache
        positions = kwargs.pop("label_positions", None)  # the collator's (data/collator.py: label_positions)
        kwargs.pop("skip_logits", None)  # HF's evaluation adds it under --use_liger_kernel; no logits here anyway
        if labels is not None and self.chunked_loss:
            return self._chunked_loss_forward(embeds, attention_mask, labels, position_ids, positions, **kwargs)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                                   position_ids=position_ids, **kwargs)

    def _attention_inputs(self, attention_mask, kwargs: dict):
        """The collators give every batch its sample boundaries (data/collator.py). The varlen backend attends by
        them alone (the mask says nothing more); flash attention takes them for packed rows (it unpads padded rows
        by their mask itself); SDPA and eager mask by position ids and padding mask and never get them."""
        impl = self.language_model.config._attn_implementation
        if impl == VARLEN_BACKEND and VARLEN_KWARGS[0] in kwargs:
            return None
        if not is_flash_attention_requested(self.language_model.config) or attention_mask is not None:
            for key in VARLEN_KWARGS:
                kwargs.pop(key, None)
        return attention_mask

    def _chunked_loss_forward(self, embeds, attention_mask, labels, position_ids, positions=None,
                              num_items_in_batch=None, **kwargs):
        """With labels: the decoder's hidden states, then the loss in chunks (model/chunked_loss.py); no logits
        are returned. In evaluation (eval mode, no grad) also each row's summed loss and labelled-token count
        (`row_loss_sums`, `row_label_counts`): the trainer reports the validation loss per modality from them."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        from .chunked_loss import chunked_causal_lm_loss, chunked_row_losses
        kwargs["use_cache"] = False
        hidden = self.language_model.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                                   position_ids=position_ids, **kwargs).last_hidden_state
        head = self.language_model.get_output_embeddings()
        if not self.training and not torch.is_grad_enabled():
            sums, counts = chunked_row_losses(hidden, head, labels, self.lm_head_chunk_tokens, self.lm_head_calls,
                                              positions)
            out = CausalLMOutputWithPast(loss=sums.sum() / counts.sum().clamp(min=1), logits=None)
            out["row_loss_sums"], out["row_label_counts"] = sums, counts
            return out
        return CausalLMOutputWithPast(loss=chunked_causal_lm_loss(hidden, head, labels, num_items_in_batch,
                                                                  self.lm_head_chunk_tokens, self.lm_head_calls,
                                                                  positions, self.fused_loss),
                                      logits=None)

    @classmethod
    def empty(cls, config: VitaConfig) -> "VitaForCausalLM":
        """The model with parameters on the meta device: names, shapes and counts without memory.

        accelerate's init_empty_weights rather than `with torch.device("meta")`, which also captures tensors that
        modules imported during the build make at import time (transformers' audio_utils makes torchaudio's kaldi
        constants then, and fbank fails later in the process). It re-creates tied parameters, so tie again."""
        from accelerate import init_empty_weights
        with init_empty_weights():
            model = cls(config)
        model.tie_weights()
        return model

    @torch.no_grad()
    def generate_from_inputs(self, input_ids, attention_mask, pixel_values=None, audio_features=None,
                             audio_feature_lengths=None, images=None, image_sizes=None, image_grids=None,
                             **gen_kwargs):
        for key in (*VARLEN_KWARGS, "label_positions"):  # a training collator's batch: for its loss, not here
            gen_kwargs.pop(key, None)
        pixel_values = self.tiles(pixel_values, images, image_sizes, image_grids)
        embeds = self.embed_inputs(input_ids, pixel_values, audio_features, audio_feature_lengths)
        raise_failed()  # before generating from a mis-spliced prompt
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **gen_kwargs)
