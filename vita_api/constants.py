"""Token and label constants shared by data and model.

The reference splices at negative placeholder ids (-200 image, -500 audio) inside forward.
We instead expand each placeholder at data time into one real special token per embedding,
so sequence lengths are known before training (truncation is checked, packing is possible)
and the model only needs a masked scatter.
"""

IGNORE_INDEX = -100

IMAGE_PLACEHOLDER = "<image>"   # in conversation text: one per image (expanded to one per tile)
VIDEO_PLACEHOLDER = "<video>"   # in conversation text: one per video (expanded to one per frame)
AUDIO_PLACEHOLDER = "<audio>"   # in conversation text: one per audio clip

# Special tokens added to the tokenizer; each stands for one embedding slot.
IMAGE_TOKEN = "<|vita_image|>"
AUDIO_TOKEN = "<|vita_audio|>"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

# The reference recipe's sequence length after media expansion (the trainer's and the data tools' default).
MODEL_MAX_LENGTH = 6200

# --image_aspect_ratio: InternVL tiling, one untiled tile, or padded to a square first (the reference's values).
IMAGE_ASPECT_RATIOS = ("dynamic", "square", "pad")

# DeepSpeed configs shipped in vita_trainer/configs/<name>.json (a run spec's trainer.deepspeed, or "none").
# zero3_hpz: ZeRO-3 with ZeRO++ hierarchical partitioning (a node-local copy of the bf16 weights) for multi-node stages
DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3_offload", "zero3_hpz")

# Clips outside these bounds are counted and warned about (the reference's whale data); defaults of every tool.
MIN_AUDIO_SECONDS, MAX_AUDIO_SECONDS = 0.5, 30.0

# ImageNet normalisation (InternViT's); SigLIP uses 0.5/0.5 (vita_trainer/model/vision_families.py per family).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The words transformers' HfArgumentParser reads as booleans (its `string_to_bool`).
TRUE_WORDS, FALSE_WORDS = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")
