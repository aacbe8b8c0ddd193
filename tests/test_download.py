"""`vita-data download` against a local HTTP server that misbehaves as real ones do: a connection dropped halfway,
two 500s, then Range requests; a corrupted copy; and a Hugging Face endpoint (HF_ENDPOINT) on 127.0.0.1. Nothing
here reaches the internet."""

import hashlib
import io
import json
import random
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from PIL import Image

from vita_trainer.tools.data_cli import main as data_main
from vita_trainer.tools.download import Manifest, download

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def zip_bytes() -> bytes:
    img = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(img, format="JPEG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train2017/000000033471.jpg", img.getvalue())
        z.writestr("train2017/000000000009.jpg", img.getvalue())
        # incompressible, so the archive spans several of the client's read chunks (a drop then leaves some on disk)
        z.writestr("train2017/noise.bin", random.Random(0).randbytes(300_000), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


LLAVA = json.dumps([
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "Red."}]},
    {"id": 7, "model": "", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
]).encode()


class Server:
    """Serves `files` {path: bytes}. `script` {path: [behaviour, ...]} is consumed one request at a time:
    "drop" (send half, then close the connection), "500", then the default: 200 or 206 honouring Range."""

    def __init__(self, files: dict[str, bytes], script: dict[str, list[str]] | None = None,
                 headers: dict[str, dict] | None = None):
        self.files, self.script, self.extra = files, {k: list(v) for k, v in (script or {}).items()}, headers or {}
        self.requests: list[tuple[str, str, str | None]] = []   # (method, path, Range)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.respond(body=False)

            def do_GET(self):
                self.respond(body=True)

            def respond(self, body: bool):
                path = self.path.split("?")[0]
                server.requests.append((self.command, path, self.headers.get("Range")))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                step = server.script.get(path, []).pop(0) if server.script.get(path) else "ok"
                if step == "500":
                    self.send_error(500)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and step == "ok":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                for k, v in server.extra.get(path, {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                if step == "drop":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_for(url: str, zip_data: bytes, published_sha: str | None = None) -> dict:
    return {"sources": {
        "coco": {"files": [{"name": "coco/sample.zip", "url": f"{url}/zips/sample.zip", "approx_bytes": len(zip_data),
                            "sha256": published_sha or sha(zip_data), "unpack": "coco"}],
                 "registry": {"image_folders": {"coco": "."}}},
        "llava": {"files": [{"name": "llava/llava_v1_5_mix665k.json", "url": f"{url}/llava.json",
                             "approx_bytes": len(LLAVA)}],
                  "registry": {"datasets": {"llava_mix665k": {"chat_path": "llava/llava_v1_5_mix665k.json",
                                                              "image_folder": "."}}}}}}


@pytest.fixture
def flaky():
    data = zip_bytes()
    server = Server({"/zips/sample.zip": data, "/llava.json": LLAVA}, {"/zips/sample.zip": ["drop", "500", "500"]})
    yield server, data
    server.close()


def test_a_dropped_connection_and_500s_resume_and_the_result_checks_clean(flaky, tmp_path, capsys, tok):
    server, data = flaky
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest_for(server.url, data)))
    root = tmp_path / "datasets"
    # rate the retries fast; the CLI's defaults are the same code with a longer backoff
    report = download(root, ["coco", "llava"], Manifest.model_validate(manifest_for(server.url, data)), backoff=0.01)
    zip_gets = [r for r in server.requests if r[1] == "/zips/sample.zip"]
    assert len(zip_gets) == 4  # dropped, 500, 500, resumed
    resumed_at = int(zip_gets[-1][2].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(data) // 2  # from where the drop left off (whole chunks on disk), not from zero
    assert report["bytes"] == len(data) + len(LLAVA)    # every byte once
    assert (root / "coco" / "train2017" / "000000033471.jpg").is_file()
    assert not (root / "coco" / "sample.zip").exists() and not list(root.rglob("*.part"))
    registry = yaml.safe_load((root / "registry.yaml").read_text())
    assert registry["datasets"]["llava_mix665k"]["image_folder"] == "."
    # a rerun transfers nothing and asks the server nothing
    before = len(server.requests)
    assert download(root, ["coco", "llava"], Manifest.model_validate(manifest_for(server.url, data)))["bytes"] == 0
    assert len(server.requests) == before
    # what the README says comes next
    from vita_trainer.model.builder import tiny_config
    tok.save_pretrained(tmp_path / "model")
    tiny_config(tok).save_pretrained(tmp_path / "model")
    capsys.readouterr()
    code = data_main(["check", "--registry", str(root / "registry.yaml"), "--model", str(tmp_path / "model"),
                      "--workers", "1", "--model_max_length", "600"])
    assert code == 0 and capsys.readouterr().out.startswith("2 samples, 0 with problems")


def test_a_corrupted_copy_is_a_checksum_error_and_nothing_is_renamed(tmp_path, capsys):
    data = zip_bytes()
    server = Server({"/zips/sample.zip": data[:-10] + b"x" * 10, "/llava.json": LLAVA})
    try:
        (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest_for(server.url, data, published_sha=sha(data))))
        root = tmp_path / "datasets"
        code = data_main(["download", "--root", str(root), "--source", "coco", "--manifest", str(tmp_path / "m.yaml")])
        err = capsys.readouterr().err
        assert code == 2 and "sample.zip: sha256" in err and f"does not match the published {sha(data)}" in err
        assert not (root / "coco" / "sample.zip").exists() and not list(root.rglob("*.part"))
        assert not (root / "coco" / "train2017").exists() and not (root / "registry.yaml").exists()
    finally:
        server.close()


def test_dry_run_and_a_full_disk_stop_before_any_request(flaky, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple
    server, data = flaky
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest_for(server.url, data)))
    args = ["download", "--root", str(tmp_path / "d"), "--all", "--manifest", str(tmp_path / "m.yaml")]
    assert data_main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "coco/sample.zip" in out and "2 file(s) to fetch" in out and not server.requests
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 100))
    assert data_main(args) == 2
    assert "100 B free but the downloads need about" in capsys.readouterr().err and not server.requests


@pytest.mark.subprocess
def test_hugging_face_files_come_through_hf_endpoint_and_are_verified(tmp_path):
    """The Hub client against a mirror (HF_ENDPOINT, set as a user would, before the process starts) on
    127.0.0.1: the file arrives, and its LFS sha256 (the Hub's ETag) is checked."""
    import os
    import subprocess
    import sys
    path = "/datasets/liuhaotian/LLaVA-Instruct-150K/resolve/main/llava_v1_5_mix665k.json"
    server = Server({path: LLAVA}, headers={path: {"X-Repo-Commit": COMMIT, "ETag": f'"{sha(LLAVA)}"'}})
    try:
        (tmp_path / "m.yaml").write_text(yaml.safe_dump({"sources": {"llava_instruct": {"files": [{
            "name": "llava/llava_v1_5_mix665k.json", "approx_bytes": len(LLAVA),
            "hf": {"repo": "liuhaotian/LLaVA-Instruct-150K", "file": "llava_v1_5_mix665k.json"}}]}}}))
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        root = tmp_path / "datasets"

        def run():
            return subprocess.run([sys.executable, "-m", "vita_trainer.tools.data_cli", "download", "--root", str(root),
                                   "--source", "llava_instruct", "--manifest", str(tmp_path / "m.yaml")],
                                  env=env, capture_output=True, text=True, timeout=120)
        done = run()
        assert done.returncode == 0, done.stderr[-2000:]
        assert (root / "llava" / "llava_v1_5_mix665k.json").read_bytes() == LLAVA
        assert ("GET", path, None) in server.requests
        # a mirror serving another file than the Hub's sha256 says: refused, nothing under the final name
        server.files[path] = LLAVA.replace(b"Red", b"Blu")
        (root / ".vita-download").rename(tmp_path / "old-markers")
        (root / "llava" / "llava_v1_5_mix665k.json").unlink()
        done = run()
        assert done.returncode == 2 and "sha256 does not match the Hub's" in done.stderr, done.stderr[-2000:]
        assert not (root / "llava" / "llava_v1_5_mix665k.json").exists()
    finally:
        server.close()


def test_check_names_the_source_of_missing_images_and_the_command_that_fetches_it(tmp_path, capsys, tok):
    """A download root as `vita-data download` leaves it: LLaVA's mix is there, COCO is, GQA and OCR-VQA are not."""
    root = tmp_path / "datasets"
    (root / "coco" / "train2017").mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(root / "coco" / "train2017" / "1.jpg")
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    samples = [{"id": f"s{i}", "image": image, "conversations": turns} for i, image in
               enumerate(["coco/train2017/1.jpg", "gqa/images/2.jpg", "gqa/images/3.jpg", "ocr_vqa/images/4.jpg"])]
    (root / "llava").mkdir()
    (root / "llava" / "mix.json").write_text(json.dumps(samples))
    (root / "registry.yaml").write_text(yaml.safe_dump(
        {"datasets": {"llava_mix665k": {"chat_path": "llava/mix.json", "image_folder": "."}}}))
    tok.save_pretrained(tmp_path / "tok")
    args = ["check", "--registry", str(root / "registry.yaml"), "--tokenizer", str(tmp_path / "tok"), "--workers",
            "1"]
    assert data_main(args) == 1
    out = capsys.readouterr().out
    assert f"2 missing file(s) belong to source gqa: fetch it: vita-data download --root {root} --source gqa" in out
    assert "1 missing file(s) belong to source ocr_vqa: get it by hand: LLaVA's download script" in out
    assert "sample s1 [image[0]] missing_file" in out and "part of source gqa (GQA images" in out
    assert data_main([*args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["missing_by_source"] == {"gqa": 2, "ocr_vqa": 1}


def test_mixtures_are_written_once_their_datasets_are_there_and_the_dry_run_shows_licences(tmp_path, capsys):
    from vita_trainer.tools.download import load_manifest, update_registry
    manifest = load_manifest()
    update_registry(tmp_path, manifest, ["llava_instruct"])
    assert "mixtures" not in yaml.safe_load((tmp_path / "registry.yaml").read_text())
    update_registry(tmp_path, manifest, ["llava_pretrain"])
    reg = yaml.safe_load((tmp_path / "registry.yaml").read_text())
    assert reg["mixtures"] == {"Pretrain_image": ["llava_pretrain558k"]} and "llava_mix665k" in reg["datasets"]
    assert data_main(["download", "--root", str(tmp_path / "d"), "--source", "gqa", "--source", "sam",
                      "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "licence: CC BY 4.0" in out and "downloads.cs.stanford.edu/nlp/data/gqa/images.zip" in out
    assert "                by hand (no direct download): accept the licence at https://ai.meta.com" in out


@pytest.mark.subprocess
def test_the_disk_check_uses_the_hubs_size_not_the_manifests_estimate(tmp_path):
    """A manifest that estimates 1 TB for a Hub file the Hub lists at a few hundred bytes: the dry run prints the
    Hub's size and the download is not refused for disk."""
    import os
    import subprocess
    import sys
    path = "/datasets/liuhaotian/LLaVA-Instruct-150K/resolve/main/llava_v1_5_mix665k.json"
    server = Server({path: LLAVA}, headers={path: {"X-Repo-Commit": COMMIT, "ETag": f'"{sha(LLAVA)}"'}})
    try:
        (tmp_path / "m.yaml").write_text(yaml.safe_dump({"sources": {"llava_instruct": {"files": [{
            "name": "llava/llava_v1_5_mix665k.json", "approx_bytes": 10 ** 12,
            "hf": {"repo": "liuhaotian/LLaVA-Instruct-150K", "file": "llava_v1_5_mix665k.json"}}]}}}))
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        args = [sys.executable, "-m", "vita_trainer.tools.data_cli", "download", "--root", str(tmp_path / "d"),
                "--source", "llava_instruct", "--manifest", str(tmp_path / "m.yaml")]
        dry = subprocess.run([*args, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0 and f"{len(LLAVA)} B" in dry.stdout and "1.0 TB" not in dry.stdout, dry.stdout
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        server.close()
