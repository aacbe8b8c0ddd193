"""lmms-eval task functions of the demo's local tasks (copied next to their YAMLs as utils.py: lmms-eval loads
`!function utils.NAME` from the YAML's folder). Each document names its media file by absolute path."""

import soundfile as sf
from PIL import Image


def doc_to_visual(doc):
    if doc.get("image"):
        return [Image.open(doc["image"]).convert("RGB")]
    array, rate = sf.read(doc["audio"], dtype="float32")
    return [{"array": array, "sampling_rate": rate}]
