"""The shipped LibriSpeech and Clotho sources, served from a local HTTP server in their publishers' archive layouts
(a .tar.gz from OpenSLR, .7z and CSVs from Zenodo): downloaded with their checksum kind (sha256 / md5) verified,
unpacked, converted to conversations and registered as Pretrain_audio. Nothing here reaches the internet."""

import hashlib
import io
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import py7zr
import pytest
import yaml

from tests import audio_corpora_fixtures as corpora
from tests.test_download import Server
from vita_trainer.tools.data_cli import main as data_main
from vita_trainer.tools.download import DownloadError, Manifest, download, load_manifest


def tar_gz(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(folder, arcname=arcname)
    return buf.getvalue()


def seven_zip(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writeall(folder, arcname)
    return buf.getvalue()


@pytest.fixture
def publishers(tmp_path):
    """{url path: bytes} in the layouts OpenSLR and Zenodo publish (only the splits the test sources use)."""
    ls = corpora.librispeech(tmp_path / "make" / "ls", utterances=6, extra=False)
    clotho_csv = corpora.clotho(tmp_path / "make" / "clotho", clips=2)
    val = tmp_path / "make" / "clotho_val"
    (val / "validation").mkdir(parents=True)
    (tmp_path / "make" / "clotho" / "development" / "clip 0.wav").rename(val / "validation" / "clip 0.wav")
    val_csv = clotho_csv.read_text().splitlines()
    return {
        "/resources/12/train-clean-100.tar.gz": tar_gz(ls, "LibriSpeech/train-clean-100"),
        "/records/4783391/files/clotho_audio_development.7z": seven_zip(
            tmp_path / "make" / "clotho" / "development", "development"),
        "/records/4783391/files/clotho_captions_development.csv": "\n".join(
            [val_csv[0], val_csv[2]]).encode() + b"\n",
        "/records/4783391/files/clotho_audio_validation.7z": seven_zip(val / "validation", "validation"),
        "/records/4783391/files/clotho_captions_validation.csv": "\n".join(val_csv[:2]).encode() + b"\n",
    }


def local_manifest(server_url: str, files: dict[str, bytes], names: list[str]) -> Manifest:
    """The shipped sources, each URL moved to the local server and each published checksum replaced by the served
    file's own, of the same kind (what is tested is that the kind the publisher gives is the kind checked)."""
    shipped = load_manifest()
    sources = {}
    for name in names:
        src = shipped.sources[name].model_dump()
        for f in src["files"]:
            path = urlparse(f["url"]).path
            f["url"] = server_url + path
            data = files[path]
            kind = "sha256" if f["sha256"] else "md5"
            assert f[kind], f"{f['name']}: the shipped source gives no checksum"
            f[kind] = hashlib.new(kind, data).hexdigest()
            f["approx_bytes"] = len(data)
        sources[name] = src
    return Manifest.model_validate({"sources": sources})


def test_librispeech_and_clotho_download_verify_unpack_convert_and_register(tmp_path, publishers, capsys):
    server = Server(publishers)
    try:
        manifest = local_manifest(server.url, publishers, ["librispeech", "clotho"])
        download(tmp_path / "data", ["librispeech", "clotho"], manifest, backoff=0.01)
        again = download(tmp_path / "data", ["librispeech", "clotho"], manifest, backoff=0.01)
    finally:
        server.close()
    assert again["bytes"] == 0
    reg = yaml.safe_load((tmp_path / "data" / "registry.yaml").read_text())
    assert reg["datasets"]["librispeech_clean100"] == {
        "chat_path": "librispeech/train-clean-100.json", "audio_root": "librispeech/LibriSpeech/train-clean-100",
        "task": "asr"}
    assert reg["datasets"]["clotho_development"]["audio_root"] == "clotho/development"
    assert reg["mixtures"]["Pretrain_audio"] == ["librispeech_clean100", "clotho_development", "clotho_validation"]
    capsys.readouterr()
    assert data_main(["check", "--registry", str(tmp_path / "data" / "registry.yaml"), "--dataset_use",
                      "Pretrain_audio", "--decode", "--workers", "1"]) == 0
    assert capsys.readouterr().out.startswith("16 samples, 0 with problems")  # 6 utterances, 2 clips x 5 captions


def test_a_copy_that_fails_its_published_md5_is_removed(tmp_path, publishers):
    path = "/records/4783391/files/clotho_captions_validation.csv"
    manifest = local_manifest("http://x", publishers, ["clotho"])
    served = dict(publishers)
    served[path] = publishers[path].replace(b"low", b"LOW")  # a proxy that rewrote the file
    server = Server(served)
    try:
        for f in manifest.sources["clotho"].files:
            f.url = f.url.replace("http://x", server.url)
        with pytest.raises(DownloadError, match="md5 .* does not match the published"):
            download(tmp_path / "data", ["clotho"], manifest, backoff=0.01, retries=0)
    finally:
        server.close()
    assert not (tmp_path / "data" / "clotho" / "clotho_captions_validation.csv").exists()
    assert not (tmp_path / "data" / "clotho" / "clotho_captions_validation.csv.part").exists()
