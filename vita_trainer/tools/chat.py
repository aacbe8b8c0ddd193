"""`vita-model chat`: talk to a trained VITA: text, images, a clip or a video in, the answer streamed out
(the model, prompt and streaming are vita_trainer/inference.py)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..inference import ChatModel, Conversation, prompt_inputs, stream_reply


def answer(chat: ChatModel, conversation: Conversation, question: str, out: TextIO, **generation: Any) -> str:
    """Stream one reply to `out` and add the turn to the conversation."""
    pieces = []
    for piece in stream_reply(chat, prompt_inputs(chat, conversation, question), **generation):
        out.write(piece)
        out.flush()
        pieces.append(piece)
    out.write("\n")
    reply = "".join(pieces).strip()
    conversation.turns.append((question, reply))
    return reply


def repl(chat: ChatModel, conversation: Conversation, stdin: TextIO | None = None, stdout: TextIO | None = None,
         **generation: Any) -> None:
    """Interactive: one question per line; /reset forgets the turns (the media stay), /exit or end of input quits."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    print("chat with the model: /reset starts over, /exit (or Ctrl-D) quits", file=sys.stderr)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return
        question = line.strip()
        if question == "/reset":
            conversation.turns.clear()
        elif question:
            answer(chat, conversation, question, stdout, **generation)
