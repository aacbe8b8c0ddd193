"""Liger kernels for the Qwen2.5 inside VITA (HF's `--use_liger_kernel`), and the fused linear cross-entropy.

HF applies Liger by the top model's type, which for VITA is "vita", a type Liger does not know: nothing would be
patched. Here the language model is patched directly (RoPE, RMSNorm, SwiGLU), and the LM loss becomes Liger's
fused linear cross-entropy over the labelled positions (the logits never exist whole, as with the chunked loss).
Under ZeRO-3 the LM head's weight is sharded; it is registered as an external parameter of the loss module, so
DeepSpeed gathers it for the loss's forward and reduces its gradient as any other.
"""

from __future__ import annotations

import torch
from torch import nn

from vita_api.errors import ConfigError


def require_liger():
    """liger_kernel, or a ConfigError saying what is missing."""
    if not torch.cuda.is_available():
        raise ConfigError("--use_liger_kernel needs an NVIDIA GPU (Liger's kernels are Triton kernels); there is "
                          "none here: leave the flag off")
    try:
        import liger_kernel.transformers as liger
    except ImportError as e:
        raise ConfigError(f"--use_liger_kernel needs the liger-kernel package ({e}): pip install liger-kernel "
                          f"into the trainer's image, or leave the flag off") from e
    return liger


class FusedLinearCrossEntropy(nn.Module):
    """Summed cross-entropy of `head(hidden)` against targets, without materialising the logits."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        self._head = (head,)  # not a submodule: its weight stays the head's
        self.loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        from transformers.integrations import is_deepspeed_zero3_enabled
        if is_deepspeed_zero3_enabled():
            from deepspeed.zero import register_external_parameter
            register_external_parameter(self, head.weight)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        head = self._head[0]
        return self.loss(head.weight, hidden, targets, head.bias).float()


def apply_liger(model) -> None:
    """Patches VITA's language model in place and switches its LM loss to the fused one."""
    liger = require_liger()
    liger.apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                      fused_linear_cross_entropy=False, model=model.language_model)
    model.fused_loss = FusedLinearCrossEntropy(model.language_model.get_output_embeddings())
