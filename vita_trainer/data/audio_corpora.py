"""Readers of public audio datasets as they are laid out on disk: each gives its clips in a fixed order (sorted),
with the text a sample trains on. `vita-data audio-chat` turns them into VITA conversations.

- LibriSpeech (OpenSLR 12): `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`, one `UTTERANCE-ID TEXT` per line,
  beside `UTTERANCE-ID.flac`.
- A manifest: CSV or TSV (by extension) with a header; the audio path column and the text column.
- Parquet or Arrow as Hugging Face `datasets` writes them (`to_parquet`, the Hub's parquet files, `save_to_disk`'s
  `.arrow` files): an Audio column stored as `{bytes, path}`, and a text column.
- Clotho (captions CSV: `file_name, caption_1..caption_5`) and AudioCaps (`audiocap_id, youtube_id, start_time,
  caption`; the clips are fetched from YouTube by the user, under any of the usual names).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vita_api.errors import ConfigError, DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
FORMATS = ("librispeech", "manifest", "parquet", "clotho")
# Column names tried in order when --text-column / --audio-column are not given (Hugging Face's usual names first).
TEXT_COLUMNS = {"asr": ("text", "sentence", "transcription", "transcript", "normalized_text"),
                "caption": ("caption", "captions", "text"),
                "qa": ("answer", "response", "text")}
AUDIO_COLUMNS = ("audio", "path", "file", "file_name", "question_audio")


@dataclass(frozen=True)
class Clip:
    key: str                    # stable within the source: the sample id is built from it
    audio: str                  # relative to the corpus' audio root
    texts: tuple[str, ...]      # the transcript, the captions, or the answer
    data: bytes | None = None   # the encoded file, for a dataset that embeds its audio (written under `audio` once)


@dataclass(frozen=True)
class Corpus:
    audio_root: Path
    count: int                  # clips, known before reading them (shards are cut by position)
    clips: Iterator[Clip]


def librispeech(src: Path) -> Corpus:
    transcripts = sorted(src.rglob("*.trans.txt"))
    if not transcripts:
        raise ConfigError(f"{src}: no *.trans.txt files; --format librispeech expects a LibriSpeech split folder "
                          f"(e.g. LibriSpeech/train-clean-100) with <speaker>/<chapter>/*.trans.txt")
    clips = []
    for t in transcripts:
        for lineno, line in enumerate(t.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not text:
                raise DataError(f"line {lineno} has an utterance id but no transcript", file=str(t),
                                sample_id=utt, field="text", reason="format")
            clips.append(Clip(utt, (t.parent / f"{utt}.flac").relative_to(src).as_posix(), (text,)))
    return Corpus(src, len(clips), iter(clips))


def _csv_rows(path: Path) -> list[dict]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # some releases of Clotho's CSVs are Latin-1
        text = raw.decode("latin-1")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _column(path: Path, columns, wanted: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"{path}: no column {wanted!r} (columns: {list(columns)}); fix {flag}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise ConfigError(f"{path}: none of the {what} columns {list(candidates)} is there (columns: {list(columns)}); "
                      f"name it with {flag}")


def manifest(src: Path, task: str, audio_dir: Path | None, text_column: str | None,
             audio_column: str | None) -> Corpus:
    rows = _csv_rows(src)
    if not rows:
        raise ConfigError(f"{src}: the manifest has no rows (a header line, then one row per clip)")
    audio_col = _column(src, rows[0], audio_column, AUDIO_COLUMNS, "audio path", "--audio-column")
    text_col = _column(src, rows[0], text_column, TEXT_COLUMNS[task], "text", "--text-column")
    root = audio_dir or src.parent
    clips = []
    for i, row in enumerate(rows, 2):  # line numbers as an editor shows them (the header is line 1)
        rel = (row.get(audio_col) or "").strip()
        if not rel:
            raise DataError(f"line {i}: empty {audio_col!r}", file=str(src), sample_id=f"line {i}",
                            field=audio_col, reason="format")
        clips.append(Clip(Path(rel).with_suffix("").as_posix(), rel, ((row.get(text_col) or "").strip(),)))
    return Corpus(root, len(clips), iter(clips))


def _sniff_suffix(data: bytes) -> str:
    if data[:4] == b"RIFF":
        return ".wav"
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:4] == b"OggS":
        return ".ogg"
    return ".mp3"


def _tables(src: Path) -> list[Path]:
    files = sorted(p for p in ([src] if src.is_file() else src.rglob("*")) if p.suffix in (".parquet", ".arrow"))
    if not files:
        raise ConfigError(f"{src}: no .parquet or .arrow files (give a file, or a folder such as a dataset saved with "
                          f"save_to_disk or downloaded from the Hub)")
    return files


def _read_table(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    if path.suffix == ".parquet":
        return pq.read_table(path)
    with open(path, "rb") as f:
        try:
            return pa.ipc.open_stream(f).read_all()  # save_to_disk writes the streaming format
        except pa.ArrowInvalid:
            f.seek(0)
            return pa.ipc.open_file(f).read_all()


def _row_count(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows
    return _read_table(path).num_rows


def tables(src: Path, task: str, audio_dir: Path, text_column: str | None, audio_column: str | None) -> Corpus:
    """Rows of Parquet/Arrow files; the audio column's bytes are written under `audio_dir` (once) as
    `<file stem>/<row>.<suffix>`, so the keys stay stable however the files are named inside."""
    files = _tables(src)

    def clips() -> Iterator[Clip]:
        for path in files:
            table = _read_table(path)
            audio_col = _column(path, table.column_names, audio_column, AUDIO_COLUMNS, "audio", "--audio-column")
            text_col = _column(path, table.column_names, text_column, TEXT_COLUMNS[task], "text", "--text-column")
            stem = path.relative_to(src).with_suffix("").as_posix() if src.is_dir() else path.stem
            for i, (audio, text) in enumerate(zip(table.column(audio_col).to_pylist(),
                                                  table.column(text_col).to_pylist())):
                key = f"{stem}/{i:07d}"
                data, original = (audio.get("bytes"), audio.get("path")) if isinstance(audio, dict) else (audio, None)
                if data is None and original:  # a path-only Audio value: the file beside the table
                    local = (path.parent / original)
                    data = local.read_bytes() if local.is_file() else None
                if data is None:
                    raise DataError(f"row {i}: the {audio_col!r} column holds no audio bytes and no readable path",
                                    file=str(path), sample_id=key, field=audio_col, reason="missing_file")
                suffix = Path(original).suffix.lower() if original and Path(original).suffix.lower() in \
                    AUDIO_SUFFIXES else _sniff_suffix(data)
                texts = tuple(text) if isinstance(text, list) else ((text or "").strip(),)
                yield Clip(key, f"{key}{suffix}", texts, data)

    return Corpus(audio_dir, sum(_row_count(p) for p in files), clips())


CLOTHO_SPLITS = ("development", "validation", "evaluation")


def _clotho_audio_dir(src: Path) -> Path:
    split = next((s for s in CLOTHO_SPLITS if s in src.stem), None)
    if split is None or not (src.parent / split).is_dir():
        raise ConfigError(f"{src}: cannot tell where its clips are (expected a folder "
                          f"{src.parent / (split or '<split>')}); give --audio-dir")
    return src.parent / split


def _audiocaps_file(root: Path, row: dict) -> str:
    """AudioCaps names no file: clips fetched from YouTube are saved under the clip id, the video id or the video
    id with the start second, by the usual download scripts. The first that exists, else the first name (missing)."""
    stems = [row["audiocap_id"], f"{row['youtube_id']}_{row['start_time']}", row["youtube_id"],
             f"Y{row['youtube_id']}"]
    names = [s + ext for s in stems for ext in AUDIO_SUFFIXES]
    return next((n for n in names if (root / n).is_file()), names[0])


def captions(src: Path, audio_dir: Path | None) -> Corpus:
    rows = _csv_rows(src)
    if not rows:
        raise ConfigError(f"{src}: no rows")
    columns = list(rows[0])
    if "file_name" in columns:      # Clotho: five captions per clip
        root = audio_dir or _clotho_audio_dir(src)
        caption_cols = [c for c in columns if c.startswith("caption")]
        clips = [Clip(Path(r["file_name"]).stem, r["file_name"],
                      tuple(r[c].strip() for c in caption_cols if (r.get(c) or "").strip())) for r in rows]
        return Corpus(root, len(clips), iter(clips))
    if {"audiocap_id", "youtube_id", "caption"} <= set(columns):  # AudioCaps: one caption per row
        root = audio_dir or src.parent
        clips = [Clip(r["audiocap_id"], _audiocaps_file(root, r), (r["caption"].strip(),)) for r in rows]
        return Corpus(root, len(clips), iter(clips))
    raise ConfigError(f"{src}: neither Clotho's (file_name, caption_1..5) nor AudioCaps' (audiocap_id, youtube_id, "
                      f"start_time, caption) columns: {columns}; for another layout use --format manifest")


def open_corpus(fmt: str, src: Path, task: str, *, audio_dir: Path | None, decoded_dir: Path,
                text_column: str | None = None, audio_column: str | None = None) -> Corpus:
    if not src.exists():
        raise ConfigError(f"{src} does not exist")
    if fmt == "librispeech":
        return librispeech(src)
    if fmt == "manifest":
        return manifest(src, task, audio_dir, text_column, audio_column)
    if fmt == "parquet":
        return tables(src, task, audio_dir or decoded_dir, text_column, audio_column)
    if fmt == "clotho":
        return captions(src, audio_dir)
    raise ConfigError(f"--format {fmt}: one of {', '.join(FORMATS)}")
