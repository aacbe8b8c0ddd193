"""lmms-eval's model class for this project's VITA folders: `--model vita_folder --model_args pretrained=DIR`.

Registered through lmms-eval's `lmms_eval.models` entry-point group (pyproject.toml), so its task definitions and
metric code (MME, MMBench, MathVista, Video-MME, LibriSpeech, ...) run unchanged. Prompts are built by the same
SampleProcessor training uses (vita-model chat's path): chat format, system prompt, tiles, fbank and CMVN.

Media arrive as lmms-eval gives them: PIL images, audio as {"array", "sampling_rate"}, videos (and audio files) as
paths. Images and audio arrays are written to a temporary folder so the processor reads them as in training.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from vita_api.constants import IGNORE_INDEX
from vita_api.errors import ConfigError
from ..inference import REPLY_SYMBOLS, Conversation, batch_inputs, load_chat_model, prompt_inputs

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")


class VitaFolder(lmms):
    """One process, one request at a time (greedy by default, as the tasks' generation_kwargs say)."""

    def __init__(self, pretrained: str, base: str | None = None, device: str = "auto", system: str | None = None,
                 max_length: int = 32768, batch_size: int | str = 1, **unused: Any) -> None:
        super().__init__()
        if unused:
            raise ConfigError(f"vita_folder does not take model argument(s) {', '.join(sorted(unused))}; it takes "
                              f"pretrained, base, device, system, max_length")
        if int(batch_size or 1) != 1:
            raise ConfigError("vita_folder answers one request at a time: use batch_size 1")
        self.chat = load_chat_model(pretrained, base=base, system=system, device=device, max_length=max_length)
        self.media_dir = Path(tempfile.mkdtemp(prefix="vita-eval-media-"))
        self._media_count = 0

    # -- media ---------------------------------------------------------------------------------------------------
    def _save(self, suffix: str, write: Any) -> str:
        self._media_count += 1
        path = self.media_dir / f"{self._media_count:07d}{suffix}"
        write(path)
        return str(path)

    def conversation(self, visuals: list[Any]) -> Conversation:
        """The request's media, in lmms-eval's forms, as the files of a chat's first question."""
        import soundfile as sf
        from PIL import Image
        conv = Conversation()
        for v in visuals:
            if isinstance(v, Image.Image):
                conv.images.append(self._save(".png", lambda p, v=v: v.convert("RGB").save(p)))
            elif isinstance(v, dict) and "array" in v:
                conv.audio.append(self._save(".wav", lambda p, v=v: sf.write(p, v["array"], v["sampling_rate"])))
            elif isinstance(v, (str, os.PathLike)) and str(v).lower().endswith(AUDIO_SUFFIXES):
                conv.audio.append(str(v))
            elif isinstance(v, (str, os.PathLike)):
                if conv.video:
                    raise ConfigError(f"a request has two videos ({conv.video}, {v}); VITA takes one per question")
                conv.video = str(v)
            else:
                raise ConfigError(f"lmms-eval gave a visual of type {type(v).__name__}; vita_folder takes PIL "
                                  f"images, audio dicts (array, sampling_rate) and file paths")
        return conv

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
        got = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else None
        return [v for v in (got or []) if v is not None]

    def _clear_media(self) -> None:
        for f in self.media_dir.iterdir():
            f.unlink()

    # -- lmms-eval's interface -----------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for req in tqdm(requests, desc="vita_folder generate", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            conv = self.conversation(self._visuals(doc_to_visual, doc_id, task, split))
            text = self.generate(conv, context, dict(gen_kwargs or {}))
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            self._clear_media()
        return out

    def generate(self, conv: Conversation, question: str, gen: dict[str, Any]) -> str:
        until = gen.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen.pop("temperature", 0) or 0)
        do_sample = bool(gen.pop("do_sample", temperature > 0))
        kwargs: dict[str, Any] = {"max_new_tokens": int(gen.pop("max_new_tokens", 1024)), "do_sample": do_sample,
                                  "num_beams": int(gen.pop("num_beams", 1) or 1)}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=float(gen.pop("top_p", 1.0) or 1.0))
        inputs = prompt_inputs(self.chat, conv, question)
        tok = self.chat.tokenizer
        with torch.no_grad():
            ids = self.chat.model.generate_from_inputs(**inputs, eos_token_id=tok.eos_token_id,
                                                       pad_token_id=tok.pad_token_id, **kwargs)
        text = tok.decode(ids[0], skip_special_tokens=True).lstrip("".join(REPLY_SYMBOLS))
        for stop in until:
            if stop and stop in text:
                text = text[:text.index(stop)]
        return text.strip()

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """(the continuation's mean negative log-likelihood, whether greedy decoding gives it): like lmms-eval's own
        LLaVA class, a loss, as its multiple_choice tasks expect (they pick the smallest).

        Each pair travels in a GenerationResult: lmms-eval 0.7.3's evaluator turns any other non-string response
        into its str() (api/instance.py unwrap_generation_output), which its multiple_choice scoring cannot unpack;
        a GenerationResult's payload is passed through as it is."""
        out = []
        for req in tqdm(requests, desc="vita_folder loglikelihood", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            conv = self.conversation(self._visuals(doc_to_visual, doc_id, task, split))
            out.append(GenerationResult(text=self.continuation_loss(conv, context, continuation)))  # type: ignore
            self._clear_media()
        return out

    def continuation_loss(self, conv: Conversation, question: str, continuation: str) -> tuple[float, bool]:
        """The reply turn holds the continuation (a chat model answers in its own turn, so the delimiter before it
        is dropped); the loss is over the continuation's tokens, not the reply's state symbol or end of turn."""
        from ..data.sample import parse_sample
        continuation = continuation.lstrip()
        item = self.chat.processor(parse_sample(conv.sample(question, continuation), file="<lmms-eval>", index=0),
                                   "<lmms-eval>")
        ids, labels = item["input_ids"], item["labels"]
        target = self.chat.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        trained = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        start = next((i for i in trained if ids[i:i + len(target)].tolist() == target), None)
        if start is None or not target:
            raise ConfigError(f"the continuation {continuation!r} is not tokenized the same inside the reply turn; "
                              f"use a generate_until task for this model")
        batch = batch_inputs(self.chat, {**item, "input_ids": ids[:start + len(target)],
                                         "labels": labels[:start + len(target)]})
        with torch.no_grad():
            logits = self.chat.model(**batch).logits[0, start - 1:start + len(target) - 1].float()
        want = torch.tensor(target, device=logits.device)
        nll = torch.nn.functional.cross_entropy(logits, want)
        return float(nll), bool((logits.argmax(-1) == want).all())

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise ConfigError("vita_folder does not run multi-round tasks (generate_until_multi_round)")


# lmms-eval's entry point reads this: the class path by name, imported only when a task asks for the model.
MANIFEST = ModelManifest(model_id="vita_folder", simple_class_path="vita_trainer.evaluation.lmms_model.VitaFolder")
