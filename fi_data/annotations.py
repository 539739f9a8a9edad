"""First Impressions V2 annotation pickles: a restricted reader and a byte-exact writer.

The release ships one pickle per split (``annotation_training.pkl``,
``annotation_validation.pkl``, ``annotation_test.pkl``; see ``../shared/DESIGN.md`` section 3).
Each was written by Python 2's ``cPickle`` with protocol 2 and holds a dict
``{key: {"<11-char YouTube id>.<NNN>.mp4": value}}`` where the keys are the five ``TRAITS``
and ``INTERVIEW``, in the stored order given by :data:`PICKLE_KEY_ORDER`. The trait values
are plain floats in [0, 1]; the ``interview`` values are numpy float64 scalars, pickled as
``numpy.core.multiarray.scalar(numpy.dtype("f8", 0, 1), <8 raw bytes>)``. Dict keys are
Python 2 byte strings, so the file is read with ``encoding="latin1"`` (every byte maps to
one character, so byte strings that are not ASCII, such as the raw float64 bytes, load).

Unpickling runs code named by the file. :func:`load_annotation_pickle` therefore allows
only the two globals this format needs and replaces them by safe stand-ins that accept
nothing but a little- or big-endian float64 (numpy's own ``scalar`` is never called on
file data: with an ``object`` dtype it would turn bytes into a pointer). Any other global,
an extension code or a persistent id raises :class:`UnsafePickleError` before anything
runs. Sizes are bounded too: a file over :data:`MAX_ANNOTATION_BYTES` is refused, and the
opcode stream is checked before unpickling (:func:`_check_opcodes`), so a length or memo
index claiming more than the file holds (``BINUNICODE`` of 4 GiB, a 1 TiB
``BINUNICODE8``...) is an :class:`AnnotationFormatError` at once, never a huge allocation or
a ``MemoryError``. Every error raised while reading names the file.

:func:`write_annotation_pickle` writes the same format byte for byte (protocol 2 opcodes,
``cPickle``'s memo numbering and 1000-item ``SETITEMS`` batches), so the demo dataset's
pickles are indistinguishable in format from the real ones; re-writing the values read
from a real file reproduces that file exactly (tested when the real files are present).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from fi_data.errors import UserError
from fi_data.traits import INTERVIEW, SPLITS, TRAITS

_O, _C, _E, _A, _N = TRAITS
PICKLE_KEY_ORDER = (_E, _N, _A, _C, INTERVIEW, _O)
"""Key order of the released pickles: extraversion, neuroticism, agreeableness,
conscientiousness, interview, openness (checked against the real files)."""

ANNOTATION_FILES = dict(zip(SPLITS, ("annotation_training.pkl", "annotation_validation.pkl",
                                     "annotation_test.pkl")))
"""Split name -> file name of its annotation pickle in the release."""

CLIP_FILE_RE = re.compile(r"^([A-Za-z0-9_-]{11})\.(\d{3})\.mp4$")
"""A clip file name of the release: ``<11-char YouTube id>.<NNN>.mp4``. YouTube ids use
``A-Z a-z 0-9 - _`` and may start with ``-`` or ``_``."""

LABEL_COLUMNS = ("clip_id", "split", *TRAITS, INTERVIEW)
"""Columns of the DataFrame returned by :func:`read_annotations`, in order."""

MAX_ANNOTATION_BYTES = 64 * 2**20
"""Largest annotation pickle read (bytes): 64 MiB. The release's largest,
``annotation_training.pkl`` (6000 clips), is 0.8 MB, about 130 bytes a clip, so 64 MiB would
hold ~500,000 clips while keeping what is read into memory bounded."""

_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}

_ALLOWED_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                    ("numpy", "dtype")}
_DTYPE_STATE_TAIL = (None, None, None, -1, -1, 0)  # numpy dtype state after (version, byteorder)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something the annotation format never contains; nothing was run."""


class AnnotationFormatError(ValueError):
    """The pickle loaded but its content is not a valid First Impressions annotation file."""


def clip_id_from_name(name: str) -> str | None:
    """``"abc...XYZ.003.mp4"`` -> ``"abc...XYZ.003"``; ``None`` if the name has another shape.

    Only the last path component is looked at (``"dir/x.mp4"`` is fine).
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-4] if CLIP_FILE_RE.match(base) else None


def youtube_id(clip_id: str) -> str:
    """The source video (speaker) of a clip: the 11-character YouTube id before ``.<NNN>``."""
    return clip_id[:11]


class _Float64Dtype:
    """Stand-in for ``numpy.dtype("f8", 0, 1)`` that accepts only a float64 state."""

    def __init__(self, *args):
        if args != ("f8", 0, 1):
            raise UnsafePickleError(f"numpy.dtype{args!r}: only float64 ('f8', 0, 1) occurs in annotation files")
        self.byteorder = "<"

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">")
                and state[2:] == _DTYPE_STATE_TAIL):
            raise UnsafePickleError(f"numpy dtype state {state!r} is not a plain float64 state")
        self.byteorder = state[1]


def _float64_scalar(dtype, data):
    """Stand-in for ``numpy.core.multiarray.scalar``: 8 raw bytes -> ``numpy.float64``."""
    if not isinstance(dtype, _Float64Dtype):
        raise UnsafePickleError("numpy scalar without a float64 dtype")
    raw = data.encode("latin1") if isinstance(data, str) else data
    if not isinstance(raw, bytes) or len(raw) != 8:
        raise UnsafePickleError(f"numpy float64 scalar needs 8 data bytes, got {raw!r}")
    return np.float64(np.frombuffer(raw, dtype=dtype.byteorder + "f8")[0])


class _RestrictedUnpickler(pickle.Unpickler):
    """Messages here do not name the file: :func:`load_annotation_pickle` prefixes it."""

    def __init__(self, file):
        super().__init__(file, encoding="latin1")

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"the pickle asks for the global {module}.{name}, which annotation files never "
                "contain; refusing to load it (nothing from the file was run)")
        return _Float64Dtype if name == "dtype" else _float64_scalar

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids do not occur in annotation files")


def _check_opcodes(data: bytes) -> None:
    """Walk the opcode stream without building anything (:func:`pickletools.genops`).

    Catches what would make the unpickler allocate far more than the file holds: a counted
    string, bytes or integer longer than the rest of the file (genops raises), and a memo
    index larger than the number of opcodes so far (the C unpickler sizes its memo by the
    largest index: ``LONG_BINPUT 4294967295`` would allocate 32 GiB).

    Raises:
        ValueError: the stream is malformed or claims an absurd size (without the file name).
    """
    for count, (op, arg, pos) in enumerate(pickletools.genops(data), 1):
        if op.name in _MEMO_PUTS and int(arg) > count:
            raise ValueError(f"memo index {int(arg):,} at byte {pos} exceeds the {count:,} opcodes read so far")


def load_annotation_pickle(file, origin: str | None = None) -> dict:
    """Load an annotation pickle with the restricted unpickler (module docstring).

    Args:
        file: a path, or a binary file object (e.g. a zip member).
        origin: the name used in error messages (default: the path or ``file.name``).

    Returns:
        ``{key: {file name: float | numpy.float64}}`` exactly as stored (key order kept).

    The file is read whole (at most :data:`MAX_ANNOTATION_BYTES`), its opcodes checked
    (:func:`_check_opcodes`), then unpickled from memory.

    Raises:
        UnsafePickleError: a global other than the numpy float64 reconstruction, or any
            other construct outside the format; nothing from the file is executed.
        AnnotationFormatError (a ``ValueError``): the file is not a pickle, is truncated,
            is larger than :data:`MAX_ANNOTATION_BYTES`, or claims a size it does not hold
            (a string longer than the file, a huge memo index; checked before any
            allocation; a ``MemoryError`` while unpickling also ends here).
        OSError: the file cannot be read (errors of a zip member's stream pass through).
        Every message starts with ``origin``.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return load_annotation_pickle(f, origin or str(file))
    origin = origin or getattr(file, "name", "<annotation pickle>")
    data = file.read(MAX_ANNOTATION_BYTES + 1)
    if len(data) > MAX_ANNOTATION_BYTES:
        raise AnnotationFormatError(f"{origin}: larger than the {MAX_ANNOTATION_BYTES // 2**20} MiB an annotation "
                                    "pickle can be (the release's largest is 0.8 MB); not read")
    try:
        _check_opcodes(data)
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{origin}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            MemoryError, OverflowError, RecursionError) as exc:
        raise AnnotationFormatError(f"{origin}: not a readable annotation pickle ({type(exc).__name__}: {exc})") from exc


def _first(names, k=5) -> str:
    names = sorted(names)
    return ", ".join(map(ascii, names[:k])) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def annotations_to_frame(data: dict, split: str, origin: str) -> pd.DataFrame:
    """Validate a loaded annotation dict and turn it into a label table.

    Checks: exactly the keys ``TRAITS`` + ``INTERVIEW``; every key holds the same clip set;
    every clip name has the real shape (:data:`CLIP_FILE_RE`); every value is a finite
    number in [0, 1].

    Returns:
        DataFrame with columns :data:`LABEL_COLUMNS` (clip ids without ``.mp4``, the five
        traits and ``interview`` as float64), sorted by clip id.

    Raises:
        AnnotationFormatError: naming ``origin`` and the first offending names or values.
    """
    if split not in SPLITS:
        raise UserError(f"{origin}: unknown split {split!r}; expected one of {SPLITS}")
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{origin}: expected a dict of label dicts, found {type(data).__name__}")
    expected = set(TRAITS) | {INTERVIEW}
    if set(data) != expected:
        raise AnnotationFormatError(f"{origin}: keys {sorted(map(str, data))}, expected {sorted(expected)}")
    names = None
    for key in PICKLE_KEY_ORDER:
        values = data[key]
        if not isinstance(values, dict):
            raise AnnotationFormatError(f"{origin}: {key!r} holds {type(values).__name__}, expected a dict")
        if names is None:
            names = set(values)
            first_key = key
        elif set(values) != names:
            only_here, missing = set(values) - names, names - set(values)
            raise AnnotationFormatError(
                f"{origin}: {key!r} and {first_key!r} label different clips "
                f"(only in {key!r}: {len(only_here)} {_first(only_here)}; missing: {len(missing)} {_first(missing)})")
    bad = [n for n in names if not (isinstance(n, str) and CLIP_FILE_RE.match(n))]
    if bad:
        raise AnnotationFormatError(
            f"{origin}: {len(bad)} clip names are not of the form '<11-char YouTube id>.<NNN>.mp4': {_first(bad)}")
    order = sorted(names)
    columns = {"clip_id": [n[:-4] for n in order], "split": split}
    for key in (*TRAITS, INTERVIEW):
        values = data[key]
        kinds = {type(values[n]) for n in order}
        if not kinds <= {float, np.float64, int}:
            raise AnnotationFormatError(f"{origin}: {key!r} holds {sorted(k.__name__ for k in kinds)}, expected floats")
        arr = np.array([values[n] for n in order], dtype=np.float64)
        out = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
        if out.any():
            shown = [f"{order[i]}={arr[i]!r}" for i in np.flatnonzero(out)[:5]]
            raise AnnotationFormatError(f"{origin}: {int(out.sum())} {key!r} values outside [0, 1]: {', '.join(shown)}")
        columns[key] = arr
    return pd.DataFrame(columns, columns=list(LABEL_COLUMNS))


def split_of_annotation_file(name: str) -> str | None:
    """``"annotation_validation.pkl"`` (any folder) -> ``"validation"``; ``None`` for other names."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return next((s for s, f in ANNOTATION_FILES.items() if f == base), None)


def read_annotations(file, split: str | None = None, *, origin: str | None = None) -> pd.DataFrame:
    """Read and validate one annotation pickle into a label table.

    Args:
        file: path to the ``.pkl``, or a binary file object (e.g. a zip member).
        split: one of ``SPLITS``; default: inferred from the file name
            (:data:`ANNOTATION_FILES`).
        origin: name used in error messages (default: the path or ``file.name``).

    Returns:
        DataFrame with columns :data:`LABEL_COLUMNS`, one row per clip, sorted by clip id;
        traits and ``interview`` as float64.

    Raises:
        ValueError: the split is not given and cannot be inferred from the name.
        UnsafePickleError, AnnotationFormatError: see :func:`load_annotation_pickle` and
            :func:`annotations_to_frame`.
    """
    origin = origin or (str(file) if isinstance(file, (str, os.PathLike)) else getattr(file, "name", "<annotations>"))
    split = split or split_of_annotation_file(origin)
    if split is None:
        raise UserError(f"{origin}: cannot tell the split from the name; expected one of "
                         f"{sorted(ANNOTATION_FILES.values())} or an explicit split")
    return annotations_to_frame(load_annotation_pickle(file, origin), split, origin)


# ---------------------------------------------------------------------------------------
# Writer: Python 2 cPickle, protocol 2, byte for byte.

class _Py2PickleWriter:
    """Emits the opcodes Python 2's cPickle writes for the annotation dict.

    Memo: every object is memoized in creation order (``BINPUT``/``LONG_BINPUT``); clip-name
    strings are shared between the six inner dicts (the real files reference the first dict's
    keys with ``BINGET``), so they are memoized by value. Each float64 payload is a fresh
    memo entry, as in the real files.
    """

    def __init__(self):
        self.out = io.BytesIO()
        self.memo_size = 0
        self.strings: dict[str, int] = {}
        self.scalar_refs = None  # memo ids of the scalar global and the float64 dtype

    def put(self):
        i = self.memo_size
        self.memo_size += 1
        self.out.write(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))

    def get(self, i):
        self.out.write(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    def raw_string(self, data: bytes):
        if len(data) < 256:
            self.out.write(b"U" + bytes([len(data)]) + data)
        else:
            self.out.write(b"T" + struct.pack("<I", len(data)) + data)
        self.put()

    def string(self, s: str, shared: bool):
        if shared and s in self.strings:
            self.get(self.strings[s])
            return
        if shared:
            self.strings[s] = self.memo_size
        self.raw_string(s.encode("latin1"))

    def float64(self, value):
        w = self.out.write
        if self.scalar_refs is None:
            w(b"cnumpy.core.multiarray\nscalar\n")
            scalar_id = self.memo_size
            self.put()
            w(b"cnumpy\ndtype\n")
            self.put()
            self.raw_string(b"f8")
            w(b"K\x00K\x01\x87")  # BININT1 0, BININT1 1, TUPLE3
            self.put()
            w(b"R")
            dtype_id = self.memo_size
            self.put()
            w(b"(K\x03")  # MARK, BININT1 3
            self.raw_string(b"<")
            w(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t")  # None x3, BININT -1 x2, BININT1 0, TUPLE
            self.put()
            w(b"b")  # BUILD
            self.scalar_refs = (scalar_id, dtype_id)
        else:
            self.get(self.scalar_refs[0])
            self.get(self.scalar_refs[1])
        self.raw_string(np.float64(value).astype("<f8").tobytes())
        w(b"\x86")  # TUPLE2
        self.put()
        w(b"R")
        self.put()

    def dict_items(self, items, write_value):
        """cPickle's batching: MARK ... SETITEMS per 1000 items, SETITEM for a lone item."""
        for start in range(0, len(items), 1000):
            batch = items[start:start + 1000]
            if len(batch) > 1:
                self.out.write(b"(")
            for key, value in batch:
                self.string(key, shared=True)
                write_value(value)
            self.out.write(b"u" if len(batch) > 1 else b"s")


def annotation_pickle_bytes(data: dict) -> bytes:
    """Serialize ``{key: {file name: value}}`` exactly as Python 2's cPickle (protocol 2) would.

    Keys and clip names are written as Python 2 byte strings (``latin1``); the ``interview``
    values as numpy float64 scalars, every other value as a binary float. Key and clip order
    are kept as given.
    """
    w = _Py2PickleWriter()
    w.out.write(b"\x80\x02}")  # PROTO 2, EMPTY_DICT
    w.put()

    def inner(key):
        def write_dict(values):
            w.out.write(b"}")
            w.put()
            if key == INTERVIEW:
                w.dict_items(list(values.items()), w.float64)
            else:
                w.dict_items(list(values.items()), lambda v: w.out.write(b"G" + struct.pack(">d", float(v))))
        return write_dict

    items = list(data.items())
    for start in range(0, len(items), 1000):  # the outer dict has 6 items: one batch
        batch = items[start:start + 1000]
        if len(batch) > 1:
            w.out.write(b"(")
        for key, values in batch:
            w.string(key, shared=False)
            inner(key)(values)
        w.out.write(b"u" if len(batch) > 1 else b"s")
    w.out.write(b".")
    return w.out.getvalue()


def labels_to_annotation_dict(labels: pd.DataFrame) -> dict:
    """A label table (columns ``clip_id``, ``TRAITS``, ``INTERVIEW``) -> the pickle's dict.

    Keys in :data:`PICKLE_KEY_ORDER`, clips in the table's row order, names with ``.mp4``.

    Raises:
        ValueError: a column is missing or a clip id is not of the real shape.
    """
    missing = [c for c in ("clip_id", *TRAITS, INTERVIEW) if c not in labels.columns]
    if missing:
        raise ValueError(f"label table lacks columns {missing}")
    names = [f"{cid}.mp4" for cid in labels["clip_id"]]
    bad = [n for n in names if not CLIP_FILE_RE.match(n)]
    if bad:
        raise ValueError(f"{len(bad)} clip ids are not '<11-char YouTube id>.<NNN>': {_first(bad)}")
    return {key: dict(zip(names, labels[key].astype(float).tolist())) for key in PICKLE_KEY_ORDER}


def write_annotation_pickle(path: str | os.PathLike, labels: pd.DataFrame | dict) -> Path:
    """Write an annotation pickle in the release's exact format (see the module docstring).

    Args:
        path: output file (written atomically: temp file + ``os.replace``).
        labels: a label table (as returned by :func:`read_annotations`) or the pickle dict
            itself (``{key: {"<id>.<NNN>.mp4": value}}``).

    Returns:
        ``Path(path)``.
    """
    data = labels if isinstance(labels, dict) else labels_to_annotation_dict(labels)
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(annotation_pickle_bytes(data))
    os.replace(tmp, path)
    return path
