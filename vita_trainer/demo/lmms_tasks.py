"""The demo's held-out questions as lmms-eval tasks, in lmms-eval's own task format (YAML + utils.py + JSONL), so
`vita-model eval` scores the demo model the way it scores MME or MMBench:

- vita_demo_color: "What color is the shape?" answered freely (generate_until), scored by exact match;
- vita_demo_color_choice: the same question as a multiple choice over the six colours (loglikelihood), scored by
  accuracy;
- vita_demo_pitch: "What pitch are the beeps?" on the clips (generate_until), exact match.
The group vita_demo runs all three.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from . import synth

GROUP = "vita_demo"


def _questions(chat_file: Path, media_root: Path, media_key: str, question: str) -> list[dict]:
    docs = []
    for sample in json.loads(chat_file.read_text()):
        convs = sample["conversations"]
        for q, a in zip(convs[::2], convs[1::2]):
            if q["value"].split("\n")[-1] == question:
                media = sample[media_key][0] if isinstance(sample[media_key], list) else sample[media_key]
                docs.append({"id": sample["id"], media_key: str((media_root / media).resolve()), "question": question,
                             "answer": a["value"]})
    return docs


def _task(name: str, docs_file: Path, output_type: str, **extra) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(docs_file)}},
            "test_split": "test", "output_type": output_type, "doc_to_visual": "!function utils.doc_to_visual",
            "doc_to_text": "question", "doc_to_target": "answer", **extra, "metadata": {"version": 1.0}}


EXACT_MATCH = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                "ignore_punctuation": True}]
GREEDY = {"max_new_tokens": 8, "temperature": 0, "do_sample": False}


def write_tasks(demo_root: str | Path, out: str | Path) -> Path:
    """Write the tasks for the demo data under `demo_root` (vita-train demo's --out) into `out`."""
    root, out = Path(demo_root).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    colour = _questions(root / "chats" / "image_eval.json", root / "images", "image", synth.IMAGE_QUESTIONS[0][0])
    pitch = _questions(root / "chats" / "audio_eval.json", root / "audio", "audio", synth.AUDIO_QUESTIONS[0][0])
    for name, docs in (("color", colour), ("pitch", pitch)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = {
        "vita_demo_color": _task("vita_demo_color", out / "color.jsonl", "generate_until",
                                 generation_kwargs=GREEDY, metric_list=EXACT_MATCH),
        "vita_demo_color_choice": _task("vita_demo_color_choice", out / "color.jsonl", "multiple_choice",
                                        doc_to_choice=list(synth.COLOURS), target_delimiter="",
                                        metric_list=[{"metric": "acc"}]),
        "vita_demo_pitch": _task("vita_demo_pitch", out / "pitch.jsonl", "generate_until",
                                 generation_kwargs=GREEDY, metric_list=EXACT_MATCH),
    }
    for name, task in tasks.items():
        # lmms-eval reads "!function" as a YAML tag: written as text, then unquoted
        text = yaml.safe_dump(task, sort_keys=False).replace("'!function utils.doc_to_visual'",
                                                             "!function utils.doc_to_visual")
        (out / f"{name}.yaml").write_text(text)
    (out / f"{GROUP}.yaml").write_text(yaml.safe_dump({"group": GROUP, "task": list(tasks)}, sort_keys=False))
    shutil.copyfile(Path(__file__).with_name("lmms_task_utils.py"), out / "utils.py")
    return out
