"""Plain file inputs (parquet, csv, jsonl) and the parquet folder sink, through pyarrow.

Layout of a parquet sink at ``path``::

    path/<app>-v<version>/...parquet   one folder per committed run (hive partition folders inside)
    path/<app>-v<version>/_COMMITTED   JSON marker: app_id, version, rows, files, schema, metadata
    path/_staging/                     files being written and commits being assembled

Guarantees: a run's files are written under ``_staging/``, moved into a fresh staging folder together
with the ``_COMMITTED`` marker, and that folder is renamed to its key-named place in one step. On a local
or HDFS file system the rename is atomic, so a reader that lists ``path`` (pyarrow/Spark skip names that
start with ``_`` or ``.``) sees all of a run or none of it, and a second commit of the same key fails on
the existing folder and is reported as already committed. On object stores (S3, GCS) a rename is a copy,
so there is no atomicity: use a Delta or Iceberg sink there.

``mode: overwrite`` replaces exactly the runs that were committed when the overwrite BEGAN, never a run
that commits after that, whatever the timing (as on Delta, a concurrent append survives an overwrite):

- An overwrite begins when its first ``stage`` call starts (``commit``: when ``commit`` starts). Each
  staging call lists the committed folders at its start and keeps that list next to its files
  (``_staging/files/<call>/_SEEN``); the commit replaces the folders every staging call saw (the
  intersection, i.e. what the earliest call saw). An overwrite that staged no files began at its commit.
- The list is recorded in the overwrite's own marker (``replaces``). After its folder is renamed into
  place, the data of exactly those folders is deleted; their markers stay, so their keys still count as
  committed. A run committed after the overwrite began is not in the list and keeps its rows.
- A reader listing the folder between the overwrite's rename and that deletion can see old and new rows
  together (a plain folder has no snapshot to switch atomically: use Delta or Iceberg for that).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from hashlib import sha1
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from gliclass_dist.spec import InputSpec, SinkSpec

from .base import (
    APP_ID_PROP,
    VERSION_PROP,
    Commit,
    CommitResult,
    SinkData,
    StagedFile,
    arrow_filter,
    as_reader,
    check_compatible,
    check_files_exist,
    conform,
    plain_schema,
    resolve_fs,
    skip_result,
    with_version,
    write_files,
)
from .interface import Sink, Source

logger = logging.getLogger(__name__)

MARKER = "_COMMITTED"
SEEN = "_SEEN"  # in a staging call's folder: the committed folders it saw when it started (overwrites)
STAGING = "_staging"
FILE_FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "json"}


# ---------------------------------------------------------------------------------------------- reading


class FileSource(Source):
    """Parquet, csv and jsonl files or folders (no versions)."""

    def read(
        self, spec: InputSpec, *, columns: Sequence[str] | None = None, since_version: int | None = None
    ) -> pa.RecordBatchReader:
        """Stream a parquet/csv/jsonl file or folder (hive partition folders become columns), ``filter`` applied."""
        filesystem, path = resolve_fs(spec.path)
        dataset = ds.dataset(path, format=FILE_FORMATS[spec.format], filesystem=filesystem, partitioning="hive")
        scanner = dataset.scanner(
            columns=list(columns) if columns else None,
            filter=arrow_filter(spec.filter) if spec.filter else None,
        )
        return with_version(scanner.to_reader(), None)


# ---------------------------------------------------------------------------------------------- the sink


def folder_name(app_id: str, version: int) -> str:
    """The committed folder of ``(app_id, version)``: readable, safe as a path, never hidden."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", app_id).lstrip("._") or "app"
    if safe != app_id:
        safe += "-" + sha1(app_id.encode()).hexdigest()[:8]
    return f"{safe}-v{version}"


def _commits(sink: SinkSpec) -> list[tuple[str, dict[str, Any]]]:
    """``(folder, marker)`` of every committed run, oldest first."""
    filesystem, root = resolve_fs(sink.path)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        return []
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory or info.base_name.startswith(("_", ".")):
            continue
        marker = f"{info.path}/{MARKER}"
        if filesystem.get_file_info(marker).type != pafs.FileType.File:
            continue
        with filesystem.open_input_stream(marker) as stream:
            found.append((info.path, json.loads(stream.read())))
    return sorted(found, key=lambda item: item[1].get("committed_at", 0))


def _committed_names(sink: SinkSpec) -> set[str]:
    """The names of the committed folders now (what an overwrite beginning now will replace)."""
    return {folder.rstrip("/").rsplit("/", 1)[-1] for folder, _ in _commits(sink)}


def _files_dir(sink: SinkSpec) -> str:
    return f"{resolve_fs(sink.path)[1].rstrip('/')}/{STAGING}/files"


def _seen_when_staged(filesystem: pafs.FileSystem, call_dirs: Sequence[str]) -> set[str] | None:
    """The committed folders every staging call saw at its start (None when no call recorded any)."""
    seen: set[str] | None = None
    for call_dir in call_dirs:
        path = f"{call_dir}/{SEEN}"
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            continue
        with filesystem.open_input_stream(path) as stream:
            names = set(json.loads(stream.read()))
        seen = names if seen is None else seen & names
    return seen


def _empty_commits(filesystem: pafs.FileSystem, root: str, names: set[str]) -> None:
    """Delete the data of the committed folders ``names``, leaving their markers (their keys stay committed)."""
    for name in sorted(names):
        folder = f"{root}/{name}"
        if filesystem.get_file_info(f"{folder}/{MARKER}").type != pafs.FileType.File:
            continue  # never touch a folder that is not a committed run
        for entry in filesystem.get_file_info(pafs.FileSelector(folder)):
            if entry.type == pafs.FileType.Directory:
                filesystem.delete_dir(entry.path)
            elif entry.base_name != MARKER:
                filesystem.delete_file(entry.path)


class ParquetSink(Sink):
    """Parquet folder sinks: one key-named folder per run, renamed into place (see the module docstring)."""

    def last_committed(self, sink: SinkSpec, app_id: str) -> int | None:
        """The highest version ``app_id`` committed into the folder, or None."""
        versions = [m["version"] for _, m in _commits(sink) if m.get(APP_ID_PROP) == app_id]
        return max(versions) if versions else None

    def table_schema(self, sink: SinkSpec) -> pa.Schema | None:
        """The schema of the latest committed run (stored in its marker), or None."""
        for _, marker in reversed(_commits(sink)):
            if marker.get("schema"):
                return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(marker["schema"])))
        return None

    def stage(self, sink: SinkSpec, data: SinkData, schema: pa.Schema | None = None) -> list[StagedFile]:
        """Write ``data`` as parquet files under ``_staging/`` (invisible to readers); run this on the workers."""
        seen = self.begin(sink)  # before any work: an overwrite begins at its first staging call
        reader = as_reader(data, schema)
        existing = self.table_schema(sink)
        if existing is not None:
            check_compatible(existing, reader.schema, f"parquet sink {sink.path!r}")
            reader = conform(reader, existing)
        else:
            reader = conform(reader, plain_schema(reader.schema))
        base = f"{_files_dir(sink)}/{uuid.uuid4().hex}"  # one folder per stage call, removed at commit
        if "://" in sink.path:
            base = sink.path.split("://", 1)[0] + "://" + base
        files = write_files(reader, base, target_file_rows=sink.target_file_rows, partition_by=sink.partition_by)
        if seen is not None and files:
            filesystem, inner = resolve_fs(base)
            with filesystem.open_output_stream(f"{inner}/{SEEN}") as stream:
                stream.write(json.dumps(sorted(seen)).encode())
        return files

    def begin(self, sink: SinkSpec) -> set[str] | None:
        """An overwrite begins here: the committed folders it will replace (None for appends)."""
        return _committed_names(sink) if sink.mode == "overwrite" else None

    def commit_staged(self, sink: SinkSpec, commit: Commit) -> CommitResult:
        """Move exactly the files into the key-named folder of ``(app_id, version)`` in one rename.

        With ``mode: overwrite``, the runs committed when the run began are replaced: ``commit.begun`` (from
        ``begin``), else what the first staging call of the files saw (see the module docstring).
        """
        app_id, version, files, schema = commit.app_id, commit.version, commit.files, commit.schema
        where = self.describe(sink)
        done = self.last_committed(sink, app_id)
        if done is not None and done >= version:
            return self.skipped(sink, commit, done)
        existing = self.table_schema(sink)
        if schema is not None and existing is not None:
            check_compatible(existing, schema, f"parquet sink {sink.path!r}")
        stored_schema = schema if schema is not None else existing
        check_files_exist(files)
        filesystem, root = resolve_fs(sink.path)
        root = root.rstrip("/")
        files_dir = _files_dir(sink) + "/"
        relative, call_dirs = [], set()
        for f in files:
            inner = resolve_fs(f.path)[1]
            if not inner.startswith(files_dir) or "/" not in inner[len(files_dir) :]:
                raise ValueError(f"staged file {f.path!r} is not under the sink's staging folder {files_dir!r}")
            call_dir, rel = inner[len(files_dir) :].split("/", 1)
            call_dirs.add(files_dir + call_dir)
        replaces = None
        if sink.mode == "overwrite":
            replaces = commit.begun if commit.begun is not None else _seen_when_staged(filesystem, sorted(call_dirs))
            if replaces is None:  # nothing staged: the overwrite begins now
                replaces = _committed_names(sink)
        assembly = f"{root}/{STAGING}/commit-{uuid.uuid4().hex}"
        filesystem.create_dir(assembly)
        for f in files:
            inner = resolve_fs(f.path)[1]
            rel = inner[len(files_dir) :].split("/", 1)[1]
            if "/" in rel:
                filesystem.create_dir(f"{assembly}/{rel.rsplit('/', 1)[0]}")
            filesystem.move(inner, f"{assembly}/{rel}")
            relative.append(rel)
        marker = {
            APP_ID_PROP: app_id,
            "version": version,
            VERSION_PROP: str(version),
            "mode": sink.mode,
            "rows": commit.rows,
            "files": relative,
            "committed_at": time.time(),
            "schema": base64.b64encode(stored_schema.serialize().to_pybytes()).decode()
            if stored_schema
            else None,
            "metadata": commit.extra_metadata,
        }
        if replaces is not None:
            marker["replaces"] = sorted(replaces)
        with filesystem.open_output_stream(f"{assembly}/{MARKER}") as stream:
            stream.write(json.dumps(marker, default=str).encode())
        target = f"{root}/{folder_name(app_id, version)}"
        try:
            filesystem.move(assembly, target)  # the commit point
        except OSError:
            if filesystem.get_file_info(f"{target}/{MARKER}").type == pafs.FileType.File:
                filesystem.delete_dir(assembly)
                return skip_result(app_id, version, version, f"{where} (committed concurrently)")
            raise
        for folder in call_dirs:  # now only empty partition folders are left in them
            filesystem.delete_dir(folder)
        if replaces:
            _empty_commits(filesystem, root, replaces - {folder_name(app_id, version)})
        return self.committed(sink, commit)

    def optimize(self, sink: SinkSpec, **_: Any) -> dict[str, Any]:
        """Parquet folders have no compaction here (rewriting committed folders would break their markers)."""
        logger.info("parquet sink %s: no compaction for parquet folders; use a Delta or Iceberg sink", sink.path)
        return {"compacted": False, "reason": "parquet sinks are not compacted"}
