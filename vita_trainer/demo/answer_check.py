"""The demo's answer check: held-out exact-match accuracy. Each question of each held-out sample is asked alone and
the greedy answer compared. (Not the benchmarks of spec.evaluation, nor the validation loss of evalDatasetUse.)"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from vita_api.constants import IGNORE_INDEX
from ..data.collator import MultimodalCollator
from ..data.sample import parse_sample


def question_samples(sample: dict) -> list[tuple[str, dict]]:
    """One single-question sample per (question, answer) turn pair, media placeholder kept on the question."""
    convs = sample["conversations"]
    placeholder = convs[0]["value"].split("\n", 1)[0] + "\n" if convs[0]["value"].startswith("<") else ""
    out = []
    for i in range(0, len(convs), 2):
        q = convs[i]["value"]
        q = q if q.startswith(placeholder) else placeholder + q
        out.append((q.split("\n")[-1], {**sample, "conversations": [{"from": "human", "value": q},
                                                                    {"from": "gpt", "value": convs[i + 1]["value"]}]}))
    return out


@torch.no_grad()
def answer_accuracy(model, tokenizer, processor, chat_file: str, kind_of_question) -> dict:
    """Returns accuracy per question kind and overall, plus a few wrong answers for inspection."""
    model.eval()
    collate = MultimodalCollator(tokenizer.pad_token_id)
    right, total, wrong = defaultdict(int), defaultdict(int), []
    samples = json.loads(Path(chat_file).read_text())
    for idx, raw in enumerate(samples):
        for question, single in question_samples(raw):
            item = processor(parse_sample(single, file=chat_file, index=idx), chat_file)
            answer = single["conversations"][1]["value"]
            first_label = int((item["labels"] != IGNORE_INDEX).nonzero()[0])
            item["input_ids"], item["labels"] = item["input_ids"][:first_label], item["labels"][:first_label]
            batch = collate([item])
            batch.pop("labels")
            out = model.generate_from_inputs(**batch, max_new_tokens=6, do_sample=False,
                                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            got = tokenizer.decode(out[0], skip_special_tokens=True).strip()
            kind = kind_of_question(question)
            total[kind] += 1
            if got == answer:
                right[kind] += 1
            elif len(wrong) < 5:
                wrong.append({"id": raw["id"], "question": question, "expected": answer, "got": got})
    acc = {k: right[k] / total[k] for k in total}
    acc["all"] = sum(right.values()) / max(sum(total.values()), 1)
    return {"accuracy": acc, "questions": dict(total), "examples_wrong": wrong}
