"""Annotation pickles: the real files, the byte-exact writer, the restricted unpickler."""
import io
import os
import pickle
import pickletools
import struct
import time

import numpy as np
import pandas as pd
import pytest

import fi_data.annotations as annotations
from conftest import SHARED_DATA
from fi_data.annotations import (ANNOTATION_FILES, PICKLE_KEY_ORDER, AnnotationFormatError, UnsafePickleError,
                                 annotation_pickle_bytes, clip_id_from_name, labels_to_annotation_dict,
                                 load_annotation_pickle, read_annotations, write_annotation_pickle, youtube_id)
from fi_data.traits import INTERVIEW, TRAITS

REAL = SHARED_DATA / "fi_annotations"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real annotation pickles not found at {REAL}")


def labels(ids, split="train", seed=0):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"clip_id": ids, "split": split})
    for key in (*TRAITS, INTERVIEW):
        table[key] = rng.uniform(0, 1, len(ids))
    return table


IDS = ["-abcdefghij.000", "_ABCDEFGHIJ.005", "k0123456789.002"]


# --- the real files -----------------------------------------------------------------------

@needs_real
def test_real_pickles_sizes_key_order_and_types():
    sizes = {}
    for split, name in ANNOTATION_FILES.items():
        raw = load_annotation_pickle(REAL / name)
        # DESIGN.md section 3: the stored key order
        assert list(raw) == ["extraversion", "neuroticism", "agreeableness", "conscientiousness", "interview",
                             "openness"] == list(PICKLE_KEY_ORDER)
        first = next(iter(raw[INTERVIEW]))
        assert type(raw[INTERVIEW][first]) is np.float64
        assert type(raw[TRAITS[0]][first]) is float
        table = read_annotations(REAL / name)
        assert list(table.columns) == ["clip_id", "split", *TRAITS, INTERVIEW]
        assert table[INTERVIEW].dtype == np.float64 and (table["split"] == split).all()
        sizes[split] = len(table)
    assert sizes == {"train": 6000, "validation": 2000, "test": 2000}


@needs_real
def test_real_training_means_match_design_doc():
    train = read_annotations(REAL / "annotation_training.pkl")
    means = train[list(TRAITS)].mean().round(3)
    assert means.tolist() == [0.566, 0.523, 0.476, 0.548, 0.520]  # O C E A N, DESIGN.md section 3


@needs_real
@pytest.mark.parametrize("name", sorted(ANNOTATION_FILES.values()))
def test_writer_reproduces_real_files_byte_for_byte(name):
    original = (REAL / name).read_bytes()
    assert annotation_pickle_bytes(load_annotation_pickle(REAL / name)) == original


# --- writer ----------------------------------------------------------------------------------

def test_written_pickle_has_python2_format(tmp_path):
    table = labels(IDS)
    path = write_annotation_pickle(tmp_path / "annotation_training.pkl", table)
    data = path.read_bytes()
    ops = list(pickletools.genops(data))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    names = {op.name for op, _, _ in ops}
    assert "SHORT_BINSTRING" in names and "BINUNICODE" not in names  # Python 2 byte strings
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {"numpy.core.multiarray scalar", "numpy dtype"}
    plain = pickle.loads(data, encoding="latin1")  # our own bytes: safe to load with pickle itself
    assert list(plain) == list(PICKLE_KEY_ORDER)
    assert list(plain[TRAITS[0]]) == [f"{i}.mp4" for i in IDS]
    assert all(type(v) is np.float64 for v in plain[INTERVIEW].values())
    back = read_annotations(path)
    expected = table.sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back[list(TRAITS)].to_numpy().tolist() == expected[list(TRAITS)].to_numpy().tolist()  # exact


def test_writer_batches_like_cpickle():
    """cPickle writes MARK ... SETITEMS per 1000 items and SETITEM for a lone item."""
    ids = [f"{i:011d}.000" for i in range(1001)]
    ops = [op.name for op, _, _ in pickletools.genops(annotation_pickle_bytes(labels_to_annotation_dict(labels(ids))))]
    assert ops.count("SETITEMS") == 6 + 1  # 6 inner dicts x 1 full batch, plus the outer dict
    assert ops.count("SETITEM") == 6  # the 1001st item of each inner dict


def test_labels_to_dict_rejects_bad_ids():
    with pytest.raises(ValueError, match="short.000"):
        labels_to_annotation_dict(labels(["short.000"]))


# --- reader safety and validation ----------------------------------------------------------

def test_non_ascii_python2_byte_strings(tmp_path):
    """Python-2 byte strings with bytes >= 0x80: the float64 payloads load exactly, and a clip
    name holding such a byte is read (latin1) and then reported as not of the real shape."""
    value = 0.5046728971962616  # its little-endian bytes are b'!V\x94\xc6G&\xe0?' (not ASCII)
    assert any(b >= 0x80 for b in struct.pack("<d", value))
    table = labels(["abcdefghijk.000"])
    table[INTERVIEW] = value
    data = annotation_pickle_bytes(labels_to_annotation_dict(table))
    good = tmp_path / "annotation_test.pkl"
    good.write_bytes(data)
    assert read_annotations(good)[INTERVIEW].tolist() == [value]
    bad = tmp_path / "annotation_validation.pkl"
    assert data.count(b"abcdefghijk.000.mp4") == 1  # memoized once, referenced by BINGET
    bad.write_bytes(data.replace(b"abcdefghijk.000.mp4", b"abcdefghij\xe9.000.mp4"))
    raw = load_annotation_pickle(bad)
    assert list(raw[TRAITS[0]]) == ["abcdefghij\u00e9.000.mp4"]
    with pytest.raises(AnnotationFormatError, match=r"annotation_validation\.pkl.*abcdefghij\\xe9\.000\.mp4"):
        read_annotations(bad)


class _RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "annotation_training.pkl"
    path.write_bytes(pickle.dumps({"openness": _RunsCode(f"touch {marker}")}, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"annotation_training\.pkl.*system"):
        read_annotations(path)
    assert not marker.exists()


def test_numpy_scalar_with_object_dtype_is_refused(tmp_path):
    """numpy's scalar() with an object dtype would turn file bytes into a pointer."""
    evil = (b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02O8K\x00K\x01\x87R"
            b"U\x08AAAAAAAA\x86R.")
    path = tmp_path / "annotation_test.pkl"
    path.write_bytes(evil)
    with pytest.raises(UnsafePickleError, match="only float64"):
        load_annotation_pickle(path)
    state = (b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02f8K\x00K\x01\x87R"
             b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU\x08AAAAAAAA\x86R.")
    path.write_bytes(state)
    with pytest.raises(UnsafePickleError, match="not a plain float64 state"):
        load_annotation_pickle(path)


def test_truncated_or_non_pickle_file(tmp_path):
    path = tmp_path / "annotation_training.pkl"
    path.write_bytes(annotation_pickle_bytes(labels_to_annotation_dict(labels(IDS)))[:100])
    with pytest.raises(AnnotationFormatError, match=r"annotation_training\.pkl: not a readable annotation pickle"):
        read_annotations(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[TRAITS[1]].update({"-abcdefghij.000.mp4": 1.25}), r"1 'conscientiousness' values outside \[0, 1\]"),
    (lambda d: d[TRAITS[1]].update({"-abcdefghij.000.mp4": float("nan")}), "outside"),
    (lambda d: d[TRAITS[2]].pop("k0123456789.002.mp4"), "label different clips"),
    (lambda d: d.pop(INTERVIEW), "keys"),
    (lambda d: [v.update({"tooshort.000.mp4": 0.5}) for v in d.values()], "not of the form"),
    (lambda d: d[TRAITS[0]].update({"-abcdefghij.000.mp4": "0.5"}), "expected floats"),
])
def test_invalid_content_names_file_and_problem(tmp_path, mutate, message):
    data = labels_to_annotation_dict(labels(IDS))
    mutate(data)
    path = tmp_path / "annotation_validation.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))  # plain floats/str: allowed constructs only
    with pytest.raises(AnnotationFormatError, match=message) as info:
        read_annotations(path)
    assert "annotation_validation.pkl" in str(info.value)


def test_split_from_name_or_argument(tmp_path):
    path = write_annotation_pickle(tmp_path / "labels.pkl", labels(IDS))
    with pytest.raises(ValueError, match="cannot tell the split"):
        read_annotations(path)
    assert set(read_annotations(path, "test")["split"]) == {"test"}


def test_clip_names():
    assert clip_id_from_name("train/-a_b-c_d-e_.004.mp4") == "-a_b-c_d-e_.004"
    assert clip_id_from_name("abcdefghijk.04.mp4") is None
    assert clip_id_from_name("abcdefghij.004.mp4") is None  # 10-char id
    assert clip_id_from_name("abcdefghi k.004.mp4") is None
    assert youtube_id("_abcdefghij.003") == "_abcdefghij"


# --- absurd sizes and file names in every error ----------------------------------------------

@pytest.mark.parametrize("claim", [
    b"X\xff\xff\xff\xff",  # BINUNICODE claiming 4 GiB
    b"\x8d" + struct.pack("<Q", 2**40),  # BINUNICODE8 claiming 1 TiB
    b"\x8e" + struct.pack("<Q", 2**40),  # BINBYTES8 claiming 1 TiB (the C unpickler allocates first)
])
def test_string_claiming_a_huge_size_fails_fast_naming_the_file(tmp_path, claim):
    path = tmp_path / "annotation_training.pkl"
    path.write_bytes(b"\x80\x02" + claim + b"abc")
    start = time.perf_counter()
    with pytest.raises(AnnotationFormatError, match=r"annotation_training\.pkl: not a readable annotation pickle") \
            as info:
        read_annotations(path)
    assert time.perf_counter() - start < 1.0
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)
    assert "only 3 remain" in str(info.value)  # the 3 bytes after the claimed length


def test_huge_memo_index_is_refused_before_unpickling(tmp_path):
    path = tmp_path / "annotation_test.pkl"
    path.write_bytes(b"\x80\x02}r\xff\xff\xff\xff.")  # EMPTY_DICT, LONG_BINPUT 4294967295 (32 GiB memo), STOP
    with pytest.raises(AnnotationFormatError, match=r"annotation_test\.pkl: .*memo index 4,294,967,295"):
        load_annotation_pickle(path)


def test_oversized_file_is_refused(tmp_path, monkeypatch):
    data = annotation_pickle_bytes(labels_to_annotation_dict(labels(IDS)))
    path = tmp_path / "annotation_training.pkl"
    path.write_bytes(data)
    monkeypatch.setattr(annotations, "MAX_ANNOTATION_BYTES", len(data) - 1)
    with pytest.raises(AnnotationFormatError, match=r"annotation_training\.pkl: larger than"):
        read_annotations(path)
    monkeypatch.setattr(annotations, "MAX_ANNOTATION_BYTES", len(data))
    assert read_annotations(path)["clip_id"].tolist() == sorted(IDS)


def test_dtype_and_scalar_refusals_name_the_file(tmp_path):
    path = tmp_path / "annotation_validation.pkl"
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02O8K\x00K\x01\x87R"
                     b"U\x08AAAAAAAA\x86R.")
    with pytest.raises(UnsafePickleError, match=r"^" + str(path).replace(".", r"\.") + r": numpy\.dtype.*only float64"):
        read_annotations(path)
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\nscalar\nK\x01U\x08AAAAAAAA\x86R.")  # no dtype at all
    with pytest.raises(UnsafePickleError, match=r"annotation_validation\.pkl: numpy scalar without a float64 dtype"):
        read_annotations(path)
    with pytest.raises(UnsafePickleError, match=r"^member\.pkl: numpy scalar without"):
        load_annotation_pickle(io.BytesIO(path.read_bytes()), origin="member.pkl")
