"""A sweep's table on disk: ``.parquet`` (pyarrow), ``.csv`` or ``.jsonl``, chosen by the
output path's extension, and the journal that makes a sweep resumable.

* While a sweep runs, every finished row is appended to ``<out>.journal.jsonl`` (one JSON
  object per line, flushed), so a crash or Ctrl-C loses at most the runs in flight (the
  unfinished runs of the chunks of points the workers hold: kvmclock.sweep.api).
* At the end, and on Ctrl-C, the table is written from the rows of ``<out>`` (if it exists),
  the journal and the new rows, sorted in the plan's order (a temporary file renamed over
  ``<out>``, so ``<out>`` is always a whole table); the journal is removed once that write
  succeeded.
* Resume: the rows already in ``<out>`` or its journal (by ``run_id``) are not run again.
  Rows of ``<out>`` that are not points of the sweep being run are not kept.

In a CSV file None is an empty cell and bools are ``true``/``false``; :func:`read_rows` gives
the cells back their types (the metric columns by :data:`~kvmclock.sweep.metrics.METRIC_TYPES`,
the parameter columns typed like ``--param``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any

from kvmclock.errors import UsageError
from kvmclock.sweep.metrics import HEAD_COLUMNS, METRIC_TYPES, PARAM_PREFIX, column_value

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "FORMATS",
    "SWEEP_EXTRA",
    "Journal",
    "check_out",
    "check_writable",
    "journal_path",
    "read_journal",
    "read_rows",
    "require_pyarrow",
    "to_table",
    "write_rows",
]

#: the output formats, by extension
FORMATS = (".parquet", ".csv", ".jsonl")
#: the optional extra that installs pyarrow
SWEEP_EXTRA = "kvmclock[sweep]"


def require_pyarrow(what: str) -> Any:
    """The ``pyarrow`` module; UsageError naming the extra ``kvmclock[sweep]`` when it is
    not installed (``what`` says what needed it)."""
    try:
        import pyarrow
    except ImportError:
        raise UsageError(
            f"{what} needs pyarrow, which is not installed; pip install '{SWEEP_EXTRA}'"
        ) from None
    return pyarrow


def _ext(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def check_out(path: str | os.PathLike[str]) -> str:
    """The output path as a string; UsageError for an extension other than
    :data:`FORMATS` or a ``.parquet`` path without pyarrow."""
    p = os.fspath(path)
    ext = _ext(p)
    if ext not in FORMATS:
        raise UsageError(
            f"--out {p}: unknown table format {ext or '(no extension)'!r}; "
            f"give a path ending in {', '.join(FORMATS)}"
        )
    if ext == ".parquet":
        require_pyarrow(f"--out {p}")
    return p


def _tmp_path(out: str) -> str:
    """The temporary file :func:`write_rows` writes before renaming it over ``out``."""
    return f"{out}.tmp-{os.getpid()}"


def check_writable(path: str | os.PathLike[str]) -> None:
    """Before the first run: the files next to ``path`` that a sweep writes can be created
    (the temporary table file is created and removed; the journal too when it does not exist
    yet, and an existing journal is opened for appending); UsageError naming ``--out`` and
    the reason otherwise (a directory that refuses new files, a missing directory, ...)."""
    p = os.fspath(path)
    jp = journal_path(p)
    for f in (_tmp_path(p), jp):
        existed = f == jp and os.path.exists(f)
        try:
            with open(f, "a", encoding="utf-8"):
                pass
            if not existed:
                os.remove(f)
        except OSError as exc:
            raise UsageError(
                f"--out {p}: cannot create {f} next to it ({exc.strerror or exc}); "
                "give a path in a directory where files can be written"
            ) from None


def journal_path(out: str | os.PathLike[str]) -> str:
    """``<out>.journal.jsonl``."""
    return os.fspath(out) + ".journal.jsonl"


class Journal:
    """Rows appended to a JSON Lines file as they finish (one object per line, flushed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def append(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` and flush it to the OS."""
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """Close and delete the journal."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def read_journal(path: str) -> list[dict[str, Any]]:
    """The rows of a journal (none when it does not exist); a line cut short by a crash is
    skipped."""
    rows: list[dict[str, Any]] = []
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return rows
    with fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "run_id" in row and "status" in row:
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# typing the cells
# ------------------------------------------------------------------------------------------
_TYPES: dict[str, type] = {**HEAD_COLUMNS, **METRIC_TYPES}


def _column_kind(name: str, values: Iterable[Any]) -> str:
    """``bool``, ``int``, ``float`` or ``str``: the type of a column."""
    if name in _TYPES:
        return _TYPES[name].__name__
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return "str"
    if kinds == {bool}:
        return "bool"
    if kinds == {int}:
        return "int"
    if kinds <= {int, float}:
        return "float"
    return "str"


def _cast(kind: str, v: Any) -> Any:
    if v is None:
        return None
    if kind == "float":
        return float(v)
    if kind == "str" and not isinstance(v, str):
        return _csv_cell(v)
    return v


def _ordered_columns(rows: list[dict[str, Any]]) -> list[str]:
    params = sorted({k for r in rows for k in r if k.startswith(PARAM_PREFIX)})
    return [*HEAD_COLUMNS, *params, *METRIC_TYPES]


def to_table(rows: list[dict[str, Any]]) -> pyarrow.Table:
    """The rows as a pyarrow Table (columns in table order, typed: int64, float64, bool,
    string; a parameter column mixing ints and decimals is float64, one mixing other types
    string)."""
    pa = require_pyarrow("a sweep table")
    arrow = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
    cols = _ordered_columns(rows)
    arrays = []
    fields = []
    for c in cols:
        vals = [r.get(c) for r in rows]
        kind = _column_kind(c, vals)
        arrays.append(pa.array([_cast(kind, v) for v in vals], type=arrow[kind]))
        fields.append(pa.field(c, arrow[kind]))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _from_csv(name: str, text: str) -> Any:
    if text == "":
        return None
    kind = _TYPES.get(name)
    if kind is str:
        return text
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is bool:
        return text.lower() == "true"
    from kvmclock.sweep.plan import parse_value

    v = parse_value(text)
    # an empty cell is None: a parameter cell reading "none" is the string (a str
    # parameter's value, such as patch09-hang's fault=none)
    return text if v is None else column_value(v)


def write_rows(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write the table (format by extension) to a temporary file next to ``path`` and rename
    it over ``path``: a reader never sees half a table."""
    p = check_out(path)
    tmp = _tmp_path(p)
    ext = _ext(p)
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(to_table(rows), tmp)
        elif ext == ".csv":
            cols = _ordered_columns(rows)
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                for r in rows:
                    w.writerow([_csv_cell(r.get(c)) for c in cols])
        else:
            cols = _ordered_columns(rows)
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps({c: r.get(c) for c in cols}, allow_nan=False) + "\n")
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a table written by :func:`write_rows` (format by extension), with their
    types (a CSV cell typed back by its column)."""
    p = os.fspath(path)
    ext = _ext(p)
    if ext not in FORMATS:
        raise UsageError(
            f"{p}: unknown table format {ext or '(no extension)'!r}; "
            f"a sweep table ends in {', '.join(FORMATS)}"
        )
    if ext == ".parquet":
        require_pyarrow(p)
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(p).to_pylist()
        for r in rows:
            for k, v in r.items():
                if isinstance(v, float) and math.isnan(v):
                    r[k] = None
        return rows
    if ext == ".csv":
        with open(p, encoding="utf-8", newline="") as fh:
            return [{k: _from_csv(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]
    out: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
    return out
