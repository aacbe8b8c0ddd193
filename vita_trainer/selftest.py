"""`python -m vita_trainer.selftest`: the image's health check. Builds a tiny VITA and runs one forward pass, and
says whether the pod sees RDMA (verbs) devices, the first thing to check when a multi-node stage crawls."""

import sys

import torch


def main() -> int:
    from .data.tokenizer import train_tiny_tokenizer
    from .model.builder import build_model, tiny_config
    tok = train_tiny_tokenizer(["hello world"] * 4, vocab_size=280)
    model = build_model(tiny_config(tok))
    ids = torch.tensor([tok("hello world")["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    ok = bool(torch.isfinite(loss))
    from .train.fabric import verbs_devices
    print(f"vita_trainer selftest: loss={loss.item():.3f} cuda={torch.cuda.is_available()} "
          f"verbs_devices={','.join(verbs_devices()) or 'none'} {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
