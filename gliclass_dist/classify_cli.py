"""gliclass-dist classify: score every row of a Parquet / CSV / JSONL file against a label set, in-process.

Writes the output schema (id/passthrough columns, labels, scores, top_label, top_score, status, model,
label_set) to OUTPUT, a Parquet file. OUTPUT appears whole or not at all: rows go to a temporary file with
a unique name beside it, which replaces OUTPUT in one rename once it is complete and is removed on any
error, Ctrl-C (SIGINT) or SIGTERM; the input is never overwritten. A problem the user can fix (a path, an
encoding, a column, a label set, a checkpoint) ends the run with one "error: ..." line on stderr and exit
status 2, found before the model is loaded wherever it can be.

Example:
    gliclass-dist classify --model models/gliclass-minilm-bbc --labels business,sport,tech --input news.parquet --output topics.parquet
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from gliclass_dist.cli import add_command
from gliclass_dist.labels import LabelSpec
from gliclass_dist.schema import output_schema
from gliclass_dist.settings import EngineSettings, add_engine_arguments

logger = logging.getLogger(__name__)

TEXT_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json"}


class CliError(Exception):
    """A problem the user can fix; the command prints it as one ``error:`` line and exits with status 2."""


class Terminated(BaseException):
    """The process received SIGTERM (raised by the handler ``sigterm_raises`` installs). Like
    ``KeyboardInterrupt`` it is no ``Exception``, so code that isolates failing rows lets it through."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def encoding_name(text: str) -> str:
    """An argparse type: a text encoding Python knows, as its canonical name (``utf8`` -> ``utf-8``)."""
    try:
        return codecs.lookup(text).name
    except LookupError:
        raise argparse.ArgumentTypeError(f"unknown encoding {text!r} (e.g. utf-8, latin-1, cp1252)") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "classify", __doc__)
    p.add_argument("--model", required=True, help="checkpoint folder, or a hub id (needs hub access)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="comma-separated labels shared by every row, e.g. 'billing,delivery,praise'")
    source.add_argument("--labels-column", help="input column holding each row's list of labels")
    source.add_argument("--label-set", metavar="FILE:NAME", help="a named label set from a YAML/JSON file")
    p.add_argument("--input", required=True, type=Path, help="input file: .parquet (or a folder of them), .csv, .jsonl")
    p.add_argument("--output", required=True, type=Path, help="output .parquet file (not the input)")
    p.add_argument("--encoding", type=encoding_name, default="utf-8",
                   help="text encoding of a .csv/.jsonl input, e.g. latin-1 or cp1252 (default: utf-8)")
    p.add_argument("--text-column", default="text", help="column with the text (default: text)")
    p.add_argument("--id-column", default=None, help="id column to carry into the output (default: id if present)")
    p.add_argument("--keep", default="", help="comma-separated extra input columns to carry into the output")
    p.add_argument("--mode", choices=["multi-label", "single-label"], default="multi-label")
    p.add_argument("--threshold", type=float, default=0.5, help="multi-label decision threshold (default 0.5)")
    p.add_argument("--prompt", default=None, help="optional task description placed after the labels")
    p.add_argument("--batch-rows", type=positive_int, default=512, help="rows read and handed to the engine at a time")
    add_engine_arguments(p.add_argument_group("engine"))
    p.set_defaults(func=run)


# -- input ----------------------------------------------------------------------------------------


def check_text_encoding(path: Path, encoding: str, chunk_bytes: int = 1 << 20) -> None:
    """Raise ``CliError`` naming the line of the first byte of ``path`` that is not valid ``encoding``.

    Arrow's readers do not say so themselves: the CSV reader turns such a column into binary (every
    row would be ``invalid_text``) and the JSON reader replaces the bytes with U+FFFD.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, line = 0, 1  # bytes before ``chunk``, and the line they end on
    with path.open("rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            pending = decoder.getstate()[0]  # an incomplete character carried over from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - len(pending) + exc.start
                line += chunk.count(b"\n", 0, max(0, at - offset))
                raise CliError(
                    f"input {path} is not valid {encoding}: byte 0x{exc.object[exc.start]:02x} on line {line} "
                    f"(byte offset {at}); use --encoding to name the file's encoding, e.g. --encoding latin-1"
                ) from None
            if not chunk:
                return
            offset += len(chunk)
            line += chunk.count(b"\n")


class InputFile:
    """An input file opened for reading in record batches: a Parquet file is streamed, row group by
    row group; a CSV / JSONL file or a folder of Parquet files is read whole."""

    def __init__(self, path: Path, encoding: str = "utf-8") -> None:
        self.path = path
        self._parquet: pq.ParquetFile | None = None
        self._table: pa.Table | None = None
        suffix = path.suffix.lower()
        try:
            if path.is_dir():
                self._table = pq.read_table(path)
            elif suffix == ".parquet":
                self._parquet = pq.ParquetFile(path)
            elif suffix in TEXT_FORMATS:
                check_text_encoding(path, encoding)
                if TEXT_FORMATS[suffix] == "csv":
                    self._table = pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(encoding=encoding))
                elif encoding == "utf-8":
                    self._table = pa_json.read_json(path)
                else:
                    with pa.OSFile(str(path)) as raw:
                        self._table = pa_json.read_json(pa.transcoding_input_stream(raw, encoding, "utf-8"))
            else:
                raise CliError(f"input {path}: unsupported format (use .parquet, .csv or .jsonl)")
        except (pa.ArrowException, OSError) as exc:
            raise CliError(f"input {path} cannot be read as {suffix.lstrip('.') or 'parquet'}: {one_line(exc)}") from None

    @property
    def schema(self) -> pa.Schema:
        return self._parquet.schema_arrow if self._parquet is not None else self._table.schema

    @property
    def num_rows(self) -> int:
        return self._parquet.metadata.num_rows if self._parquet is not None else self._table.num_rows

    def batches(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """``columns`` of every row, ``batch_rows`` rows at a time at most; read errors become ``CliError``."""
        try:
            if self._parquet is not None:
                yield from self._parquet.iter_batches(batch_size=batch_rows, columns=columns)
            else:
                yield from self._table.select(columns).to_batches(max_chunksize=batch_rows)
        except (pa.ArrowException, OSError) as exc:
            raise CliError(f"input {self.path} cannot be read: {one_line(exc)}") from None

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._parquet is not None:
            self._parquet.close()


def check_paths(input_path: Path, output: Path) -> None:
    """Refuse an input that does not exist, and an output that is a folder, the input itself (also through a
    link) or inside an input folder; create the output's folder."""
    if not input_path.exists():
        raise CliError(f"input {str(input_path)!r} does not exist")
    if output.is_dir():
        raise CliError(f"output {output} is a directory; give the path of the .parquet file to write")
    source, target = input_path.resolve(), output.resolve()
    if target == source or (output.exists() and os.path.samefile(output, input_path)):
        raise CliError(f"output {output} is the input file {input_path}; writing it would destroy the input")
    if source.is_dir() and target.is_relative_to(source):
        raise CliError(f"output {output} is inside the input folder {input_path}; write it elsewhere")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the output folder {output.parent}: {exc.strerror}") from None


# -- output ---------------------------------------------------------------------------------------


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A new temporary file with a unique name beside ``path``: when the block ends normally it is synced
    and renamed over ``path`` (``os.replace``, atomic), otherwise it is removed."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        yield tmp
        os.fsync(fd)  # the writer has closed the file: its bytes reach the disk before the rename
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates it 0600
        os.replace(tmp, path)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated``, so ``finally`` blocks clean up, as Ctrl-C
    (``KeyboardInterrupt``) does; a second SIGTERM during the clean-up is ignored."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the command ----------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pydantic's and YAML's span several)."""
    if isinstance(exc, ValidationError):
        text = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        text = f"{exc.problem} (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
    else:
        text = str(exc) or type(exc).__name__
    return re.sub(r"\s*\n\s*", " ", text.strip())


def label_spec_from_args(args: argparse.Namespace) -> LabelSpec:
    """The label spec the options describe; ``CliError`` when it is not valid."""
    common = {"mode": args.mode, "threshold": args.threshold, "prompt": args.prompt}
    try:
        if args.labels is not None:
            return LabelSpec(labels=[x for x in args.labels.split(",")], **common)
        if args.labels_column is not None:
            return LabelSpec(column=args.labels_column, **common)
        file, _, name = args.label_set.rpartition(":")
        if not file or not name:
            raise CliError("--label-set takes FILE:NAME, e.g. labels.yaml:topics")
        try:
            return LabelSpec(file=file, name=name, **common)
        except (yaml.YAMLError, OSError) as exc:
            raise CliError(f"label set file {file} cannot be read: {one_line(exc)}") from None
    except ValueError as exc:
        raise CliError(one_line(exc)) from None


def settings_from_args(args: argparse.Namespace) -> EngineSettings:
    """The engine settings the options describe; ``CliError`` naming the bad option."""
    try:
        return EngineSettings.from_args(args)
    except ValidationError as exc:
        raise CliError(
            "; ".join(
                f"--{str(e['loc'][-1]).replace('_', '-')}: {str(e['msg']).removeprefix('Value error, ')} "
                f"(got {e['input']!r})"
                for e in exc.errors()
            )
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run ``classify``; a problem the user can fix, Ctrl-C or SIGTERM ends it with one ``error:`` line."""
    try:
        with sigterm_raises():
            return classify_file(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted (SIGINT); {args.output} was not written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print(f"error: terminated (SIGTERM); {args.output} was not written", file=sys.stderr)
        return 128 + signal.SIGTERM


def classify_file(args: argparse.Namespace) -> int:
    """Check the options, paths and input, then load the model, classify and publish the output."""
    spec = label_spec_from_args(args)
    settings = settings_from_args(args)
    check_paths(args.input, args.output)
    with InputFile(args.input, args.encoding) as source:
        names = source.schema.names
        id_column = args.id_column or ("id" if "id" in names else None)
        keep = list(dict.fromkeys(c for c in [id_column, *args.keep.split(",")] if c))
        wanted = {args.text_column: "--text-column", **dict.fromkeys(keep, "--id-column/--keep")}
        if spec.column is not None:
            wanted[spec.column] = "--labels-column"
        for column, option in wanted.items():
            if column not in names:
                raise CliError(f"input {args.input} has no column {column!r} ({option}); its columns: {names}")
        try:
            empty_schema = output_schema(source.schema, keep)
        except (KeyError, ValueError) as exc:
            raise CliError(f"--keep: {one_line(exc)}") from None

        from gliclass_dist.worker import configure_worker

        configure_worker(threads=settings.threads)  # the OpenMP wait policy, before torch loads
        from gliclass_dist.engine import Classifier  # imports torch: only once the checks above passed
        from gliclass_dist.model.loading import CheckpointError
        from gliclass_dist.run import status_counts

        try:
            clf = Classifier.from_settings(settings)
        except CheckpointError as exc:
            raise CliError(one_line(exc)) from None
        except (ValueError, OSError, RuntimeError) as exc:
            raise CliError(f"model {args.model} cannot be loaded: {one_line(exc)}") from None

        started = time.perf_counter()
        statuses: Counter[str] = Counter()
        rows = 0
        try:
            with atomic_output(args.output) as tmp:
                writer: pq.ParquetWriter | None = None
                try:
                    with tqdm(total=source.num_rows, unit="rows", desc="classify", file=sys.stderr) as bar:
                        for batch in source.batches(list(wanted), args.batch_rows):
                            out = clf.classify_arrow(batch, spec, text_column=args.text_column, keep=keep)
                            if writer is None:
                                writer = pq.ParquetWriter(tmp, out.schema)
                            writer.write_table(out)
                            statuses.update(status_counts(out))
                            rows += batch.num_rows
                            bar.update(batch.num_rows)
                    if writer is None:  # empty input: still write the schema
                        writer = pq.ParquetWriter(tmp, empty_schema)
                finally:
                    if writer is not None:
                        writer.close()
        except OSError as exc:  # reading errors are CliErrors already: this is the output's folder or disk
            raise CliError(f"output {args.output} cannot be written: {one_line(exc)}") from None
    elapsed = time.perf_counter() - started
    summary = {
        "rows": rows,
        "status_counts": dict(statuses),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed, 1) if elapsed > 0 else None,
        "output": str(args.output),
        "model": clf.model_name,
        "label_set": spec.label_set_id,
    }
    print(json.dumps(summary, indent=2))
    return 0
