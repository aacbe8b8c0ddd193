"""What the trainer reads from the GPU only once per optimizer step: tokens seen (counted by the collator, as HF
counts them), the non-finite-loss check and the data checks; and the Liger option's message without a GPU."""

from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer

from tests.test_packing import samples
from vita_api.errors import ConfigError, VitaError
from vita_trainer.data.collator import MultimodalCollator, PackedCollator
from vita_trainer.train.trainer import CountingCollator, VitaTrainer


def fake_trainer(mode: str) -> SimpleNamespace:
    """What Trainer._track_num_input_tokens and ours read of a trainer, on one process."""
    return SimpleNamespace(args=SimpleNamespace(include_num_input_tokens_seen=mode, device=torch.device("cpu")),
                           model=SimpleNamespace(main_input_name="input_ids"), processing_class=None,
                           accelerator=SimpleNamespace(gather=lambda t: t.reshape(1)),
                           state=SimpleNamespace(num_input_tokens_seen=0), _unsummed_tokens=0,
                           _sum_tokens_seen=lambda: None)


@pytest.mark.parametrize("mode", ["non_padding", "all"])
def test_tokens_seen_equal_hfs_count_without_reading_the_gpu(tok, tiny_cfg, media_dir, mode):
    items = samples(tok, tiny_cfg, media_dir)
    batch = CountingCollator(MultimodalCollator(tok.pad_token_id))(items)
    hf = fake_trainer(mode)
    Trainer._track_num_input_tokens(hf, batch)  # HF's own count: the attention mask's sum, or every position
    ours = fake_trainer(mode)
    VitaTrainer._track_num_input_tokens(ours, batch)
    VitaTrainer._sum_tokens_seen(ours)
    assert ours.state.num_input_tokens_seen == hf.state.num_input_tokens_seen > 0
    packed = CountingCollator(PackedCollator(tok.pad_token_id, 4096))(items)
    assert packed["vita_batch_counts"]["tokens"] == batch["vita_batch_counts"]["tokens"]  # packing keeps the count


def test_a_nonfinite_loss_is_read_once_per_step_with_the_first_bad_value():
    trainer = SimpleNamespace(_nonfinite=None, state=SimpleNamespace(global_step=7),
                              args=SimpleNamespace(device=torch.device("cpu")))
    for loss in (1.5, float("inf"), float("nan"), 2.0):  # four micro-batches of one optimizer step
        VitaTrainer._note_nonfinite(trainer, torch.tensor(loss))
    with pytest.raises(VitaError, match=r"non-finite loss \(inf\) at step 7"):
        VitaTrainer._stop_on_failed_checks(trainer)
    assert trainer._nonfinite is None
    VitaTrainer._note_nonfinite(trainer, torch.tensor(0.5))
    VitaTrainer._stop_on_failed_checks(trainer)  # a finite step passes


def test_liger_without_a_gpu_says_so():
    from vita_trainer.model.liger import require_liger
    with pytest.raises(ConfigError, match="--use_liger_kernel needs an NVIDIA GPU"):
        require_liger()
