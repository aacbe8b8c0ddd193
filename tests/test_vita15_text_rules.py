"""The vita15 text rewriting, case by case. Every expected string was written by hand from the rules the VITA-1.5
code's `preprocess_multimodal` applies (docs/vita15-format.md lists them), not from this project's
code: T stands for one image's tokens, TT for a 2-frame video, A for one clip's tokens."""

import pytest

from vita_api.constants import AUDIO_TOKEN, IMAGE_TOKEN
from vita_trainer.data.chat_format import FORMATS

FRAMES = 2

USER_CASES = [
    # step 1: "<image>\n" and "\n<image>" go, the turn is stripped, a trailing run moves to the front
    ("<image>\nDescribe it.", "T\nDescribe it."),
    ("Describe it.\n<image>", "T\nDescribe it."),
    ("Describe it. \n<image>", "T\nDescribe it."),
    ("<image>\n<image>\nCompare the two images.", "T\nT\nCompare the two images."),
    ("<image><image>Compare.", "T\nT\nCompare."),
    ("Compare.\n<image>\n<image>", "T\nT\nCompare."),
    ("What is in <image> here?", "What is in T\n here?"),
    ("  <image>\nq  ", "T\nq"),
    ("<image>\n\nDescribe.", "T\nDescribe."),
    ("Describe.\n\n<image>", "T\nDescribe."),
    ("First <image> then <image>", "T\nFirst T\n then"),
    ("Q\n<image>\n", "T\nQ"),
    ("\n<image>\nQ", "T\nQ"),
    ("<image>", "T\n"),
    ("<image> Describe.", "T\n Describe."),
    ("Tabs\t<image>", "T\nTabs"),
    ("<image>\nQ1\n\nQ2", "T\nQ1\nQ2"),
    ("<image>\nRead:\n\n\nthe sign", "T\nRead:\n\nthe sign"),
    # <video>: only a trailing one moves; "<video>\n" is not removed, the "\n\n" it leaves becomes "\n"
    ("<video>\nWhat happens?", "TT\nWhat happens?"),
    ("What happens?\n<video>", "TT\nWhat happens?"),
    ("What happens? <video>", "TT\nWhat happens?"),
    ("<video>", "TT\n"),
    # <audio>: "<audio>\n" -> "<audio>", never moved, no strip in a turn without image or video
    ("<audio>\nWhat did I say?", "AWhat did I say?"),
    ("<audio>What did I say?", "AWhat did I say?"),
    ("What did I say?\n<audio>", "What did I say?\nA"),
    ("<audio>", "A"),
    ("<audio>\n<audio>\nCompare the voices.", "AACompare the voices."),
    ("Say:\n\n<audio>\n", "Say:\nA"),
    ("<image>\n<audio>\nAnswer this.", "T\nAAnswer this."),
    # step 3: every "\n\n", one left-to-right pass
    ("Line one\n\nLine two", "Line one\nLine two"),
    ("a\n\n\nb", "a\n\nb"),
    ("a\n\n\n\nb", "a\n\nb"),
    ("a\n\n\n\n\nb", "a\n\n\nb"),
    ("one\n\ntwo\n\nthree", "one\ntwo\nthree"),
    ("  padded text  ", "  padded text  "),
]

REPLY_CASES = [  # (previous user turn, reply, expected)
    ("Q", "A cat.\n\nIt sleeps.\n\nThe end.", "\u261cA cat.\nIt sleeps.\nThe end."),
    ("Q", "x\n\n\ny", "\u261cx\n\ny"),
    ("Q", "x\n\n\n\ny", "\u261cx\n\ny"),
    ("<audio>\nQ", "Hi.\n\nBye.", "\u261eHi.\nBye."),
]


def _show(text: str) -> str:
    return text.replace(IMAGE_TOKEN, "T").replace(AUDIO_TOKEN, "A")


@pytest.mark.parametrize("raw,expected", USER_CASES)
def test_user_turn(raw, expected):
    assert _show(FORMATS["vita15"].user_text(raw, FRAMES)) == expected


@pytest.mark.parametrize("previous,raw,expected", REPLY_CASES)
def test_reply(previous, raw, expected):
    assert FORMATS["vita15"].reply_text(raw, previous, inserted=False) == expected


def test_at_least_thirty_cases():
    assert len(USER_CASES) + len(REPLY_CASES) >= 30
