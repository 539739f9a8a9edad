"""Nested-zip reading, passwords, member-name safety, open_clip.

Encrypted fixtures come from :func:`write_zip`, a tiny zip writer in this file that can
encrypt members with ZipCrypto (PKWARE APPNOTE.TXT 6.1); Python's own zipfile decrypts
its output in ``test_writer_output_is_read_by_zipfile``, so the writer is checked
independently of the code under test. If a system ``zip`` binary exists, one test also
reads an archive it encrypted (skipped otherwise: no system tool is required).
"""
import concurrent.futures
import functools
import hashlib
import io
import multiprocessing
import os
import pickle
import shutil
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest

from fi_data.archives import (LOCATOR_SEP, PASSWORDS_ENV, ArchiveError, Passwords, PasswordError, Spooler,
                              UnsafeMemberError, UnsupportedArchiveError, ZipCryptoKeys, check_member_name,
                              clear_spools, make_locator, open_archive, open_clip, resolve_passwords, split_locator)

DOS_TIME, DOS_DATE = 0x6000, 0x48C1  # 12:00:00, 2016-06-01


def write_zip(path, members, password=None, method=zipfile.ZIP_STORED, aes=False):
    """Write a zip of ``members`` ``[(name, bytes)]``; ``password`` encrypts every member
    with ZipCrypto; ``method`` STORED or DEFLATED; ``aes`` marks members as WinZip AES
    (method 99) with a dummy payload. Returns ``path``."""
    out, central = io.BytesIO(), []
    for name, data in members:
        raw_name = name.encode()
        crc = zlib.crc32(data)
        payload = data
        if method == zipfile.ZIP_DEFLATED:
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            payload = comp.compress(data) + comp.flush()
        flags, kind = 0, 99 if aes else method
        if password is not None or aes:
            flags = 1
            if aes:
                payload = b"\0" * 28 + payload
            else:
                header = bytes(range(11)) + bytes([crc >> 24])  # last byte: the password check byte
                payload = ZipCryptoKeys(password).encrypt(header + payload)
        offset = out.tell()
        common = struct.pack("<HHHHLLL", flags, kind, DOS_TIME, DOS_DATE, crc, len(payload), len(data))
        out.write(b"PK\x03\x04" + struct.pack("<H", 20) + common + struct.pack("<HH", len(raw_name), 0)
                  + raw_name + payload)
        central.append(b"PK\x01\x02" + struct.pack("<HH", 20, 20) + common
                       + struct.pack("<HHHHHLL", len(raw_name), 0, 0, 0, 0, 0, offset) + raw_name)
    start, body = out.tell(), b"".join(central)
    out.write(body + b"PK\x05\x06" + struct.pack("<HHHHLLH", 0, 0, len(members), len(members), len(body), start, 0))
    path.write_bytes(out.getvalue())
    return path


def clip_bytes(name):
    return (f"not really an mp4: {name}\n" * 50).encode()


def member_bytes(name, members, **kw):
    """An archive's bytes, built with write_zip in a temporary folder."""
    with tempfile.TemporaryDirectory() as d:
        return write_zip(Path(d) / name, members, **kw).read_bytes()


# --- the fixture writer itself ------------------------------------------------------------

def test_writer_output_is_read_by_zipfile(tmp_path):
    members = [("a/abcdefghijk.000.mp4", clip_bytes("a")), ("b.bin", bytes(range(256)) * 40)]
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = write_zip(tmp_path / f"e{method}.zip", members, password=b"s3cret", method=method)
        with zipfile.ZipFile(path) as zf:
            assert [zf.read(n, pwd=b"s3cret") for n, _ in members] == [d for _, d in members]
            with pytest.raises(RuntimeError, match="Bad password"):
                zf.read("b.bin", pwd=b"wrong")


# --- passwords -------------------------------------------------------------------------------

def test_passwords_parse_lookup_and_precedence(tmp_path):
    pw = Passwords.parse("test-1e.zip=one,test80_*.zip=two,fallback")
    assert pw.get("/x/test-1e.zip") == b"one"
    assert pw.get("test80_07.zip") == b"two"
    assert pw.get("val-annotation-e.zip") == b"fallback"
    assert Passwords.parse("only").get("anything.zip") == b"only"
    assert Passwords.parse("a.zip=x").get("b.zip") is None
    with pytest.raises(ValueError, match="--passwords.*no archive name"):
        Passwords.parse("=x", origin="--passwords")

    pfile = tmp_path / "pw.txt"
    pfile.write_text("# comment\n\ntest-1e.zip=with,comma=and equals \n*=star\n")
    from_file = Passwords.from_file(pfile)
    assert from_file.get("test-1e.zip") == b"with,comma=and equals "
    assert from_file.get("other.zip") == b"star"

    merged = Passwords.from_sources(flag="test-1e.zip=flag", file=pfile,
                                    environ={PASSWORDS_ENV: "test-1e.zip=env,val-1.zip=env"})
    assert merged.get("test-1e.zip") == b"flag"  # flag > env > file
    assert merged.get("val-1.zip") == b"env"
    assert merged.get("zzz.zip") == b"star"
    assert "with,comma" not in repr(merged) and "flag" not in repr(merged) and "star" not in repr(merged)
    assert pickle.loads(pickle.dumps(merged)) == merged


def test_resolve_passwords_reads_environment(monkeypatch):
    monkeypatch.setenv(PASSWORDS_ENV, "x.zip=fromenv")
    assert resolve_passwords(None).get("x.zip") == b"fromenv"
    assert resolve_passwords({"y.zip": "d"}).get("y.zip") == b"d"
    assert resolve_passwords("z").get("q.zip") == b"z"
    with pytest.raises(TypeError):
        resolve_passwords(42)


# --- names and locators ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x.mp4", "a/../../x.mp4", "/etc/passwd", "\\x.mp4", "..\\x.mp4",
                                  "C:/x.mp4", "c:x.mp4", "a::b.mp4", "", "a\x00.mp4"])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(UnsafeMemberError, match="outer.zip: refusing member"):
        check_member_name(name, "outer.zip")


@pytest.mark.parametrize("name", ["test-1/test80_01.zip", "-abcdefghij.000.mp4", "a..b/c...mp4"])
def test_safe_member_names(name):
    check_member_name(name, "outer.zip")


def test_locators_round_trip_even_with_separator_in_path(tmp_path):
    odd = tmp_path / f"a{LOCATOR_SEP}b"
    odd.mkdir()
    archive = write_zip(odd / "x.zip", [("c.mp4", b"c")])
    loc = make_locator(archive, "inner.zip", "c.mp4")
    assert split_locator(loc) == (archive, ("inner.zip", "c.mp4"))
    plain = odd / "p.mp4"
    plain.write_bytes(b"p")
    assert split_locator(str(plain)) == (plain, ())
    with pytest.raises(FileNotFoundError, match="neither a file"):
        split_locator(str(tmp_path / f"missing.zip{LOCATOR_SEP}c.mp4"))


# --- open_clip -----------------------------------------------------------------------------------

@pytest.fixture
def tmp_dir(tmp_path):
    yield tmp_path / "toolkit-tmp"
    clear_spools()


def nested_release(tmp_path, inner_method=zipfile.ZIP_STORED):
    """train-1.zip (inner zips stored or deflated) > training80_01.zip > two clips."""
    names = ["-abcdefghij.000.mp4", "_abcdefghij.001.mp4"]
    inner = member_bytes("training80_01.zip", [(n, clip_bytes(n)) for n in names], method=zipfile.ZIP_DEFLATED)
    outer = write_zip(tmp_path / "train-1.zip", [("training80_01.zip", inner)], method=inner_method)
    return outer, names


def test_open_clip_plain_file_yields_the_path(tmp_path):
    clip = tmp_path / "-abcdefghij.000.mp4"
    clip.write_bytes(b"x")
    with open_clip(str(clip)) as path:
        assert path == clip
    with pytest.raises(FileNotFoundError, match="clip file not found"):
        with open_clip(str(tmp_path / "gone.mp4")):
            pass


def test_nested_stored_archive_is_read_in_place(tmp_path, tmp_dir):
    outer, names = nested_release(tmp_path)
    with open_archive(outer) as a:
        with a.open_nested("training80_01.zip", Passwords(), Spooler(tmp_dir)) as inner:
            assert inner.in_place and inner.depth == 2
            assert sorted(inner.zip.namelist()) == sorted(names)
    loc = make_locator(outer, "training80_01.zip", names[0])
    with open_clip(loc, tmp_dir=tmp_dir) as path:
        assert path.read_bytes() == clip_bytes(names[0])
        assert path.parent == tmp_dir and path.name.startswith("clip-")
        assert os.listdir(tmp_dir) == [path.name]  # no spooled copy of the inner archive
    assert os.listdir(tmp_dir) == []


def test_compressed_inner_archive_is_spooled_once_and_cleaned(tmp_path, tmp_dir):
    outer, names = nested_release(tmp_path, inner_method=zipfile.ZIP_DEFLATED)
    for name in names:
        with open_clip(make_locator(outer, "training80_01.zip", name), tmp_dir=tmp_dir) as path:
            assert path.read_bytes() == clip_bytes(name)
    spools = [p for p in os.listdir(tmp_dir) if p.startswith("spool-")]
    assert len(spools) == 1  # reused for the second clip
    clear_spools()
    assert os.listdir(tmp_dir) == []


def test_stale_spools_of_dead_processes_are_removed(tmp_path, tmp_dir):
    outer, names = nested_release(tmp_path, inner_method=zipfile.ZIP_DEFLATED)
    tmp_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_dir / f"spool-{dead.pid}-leftover.zip"
    stale.write_bytes(b"old")
    with open_clip(make_locator(outer, "training80_01.zip", names[0]), tmp_dir=tmp_dir):
        pass
    assert not stale.exists()


def test_depth_limit_missing_member_and_unsafe_locator(tmp_path, tmp_dir):
    clip = clip_bytes("deep")
    level3 = member_bytes("c.zip", [("abcdefghijk.000.mp4", clip)])
    level2 = member_bytes("b.zip", [("c.zip", level3)])
    write_zip(tmp_path / "a.zip", [("b.zip", level2)])
    with open_clip(make_locator(tmp_path / "a.zip", "b.zip", "c.zip", "abcdefghijk.000.mp4"), tmp_dir=tmp_dir) as p:
        assert p.read_bytes() == clip  # three archives deep: allowed
    level4 = member_bytes("d.zip", [("c.zip", level3)])
    write_zip(tmp_path / "e.zip", [("d.zip", member_bytes("x.zip", [("d.zip", level4)]))])
    with pytest.raises(ArchiveError, match="nested deeper than 3"):
        with open_clip(make_locator(tmp_path / "e.zip", "d.zip", "d.zip", "c.zip", "abcdefghijk.000.mp4"),
                       tmp_dir=tmp_dir):
            pass
    with pytest.raises(FileNotFoundError, match="no member 'nope.mp4'"):
        with open_clip(make_locator(tmp_path / "a.zip", "b.zip", "nope.mp4"), tmp_dir=tmp_dir):
            pass
    with pytest.raises(UnsafeMemberError, match=r"'\.\./x\.mp4'"):
        with open_clip(make_locator(tmp_path / "a.zip", "../x.mp4"), tmp_dir=tmp_dir):
            pass
    assert not (tmp_path / "x.mp4").exists() and os.listdir(tmp_dir) == []


def test_corrupt_member_raises_archive_error(tmp_path, tmp_dir):
    path = write_zip(tmp_path / "c.zip", [("abcdefghijk.000.mp4", clip_bytes("c"))])
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # flip a byte of the stored clip: CRC mismatch
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"c\.zip::abcdefghijk\.000\.mp4: member is corrupt"):
        with open_clip(make_locator(path, "abcdefghijk.000.mp4"), tmp_dir=tmp_dir):
            pass
    outer, names = nested_release(tmp_path, inner_method=zipfile.ZIP_DEFLATED)  # inner zip must be spooled
    data = bytearray(outer.read_bytes())
    data[200] ^= 0xFF
    outer.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"train-1\.zip::training80_01\.zip: archive member is corrupt"):
        with open_clip(make_locator(outer, "training80_01.zip", names[0]), tmp_dir=tmp_dir):
            pass
    assert os.listdir(tmp_dir) == []


def encrypted_release(tmp_path):
    """test-1e.zip (password 'outer') > test-1/test80_01.zip (password 'inner') > clips."""
    names = ["-abcdefghij.000.mp4", "abcdefghijk.002.mp4"]
    inner = member_bytes("test80_01.zip", [(n, clip_bytes(n)) for n in names], password=b"inner")
    outer = write_zip(tmp_path / "test-1e.zip", [("test-1/test80_01.zip", inner)], password=b"outer")
    return outer, names


def test_encrypted_nested_archives(tmp_path, tmp_dir):
    outer, names = encrypted_release(tmp_path)
    loc = make_locator(outer, "test-1/test80_01.zip", names[1])
    good = Passwords.parse("test-1e.zip=outer,test80_*.zip=inner")
    with open_clip(loc, passwords=good, tmp_dir=tmp_dir) as path:
        assert path.read_bytes() == clip_bytes(names[1])
    with pytest.raises(PasswordError, match=r"test-1e\.zip: member 'test-1/test80_01\.zip' is encrypted and no "
                                            r"password was given for 'test-1e\.zip'"):
        with open_clip(loc, passwords=Passwords(), tmp_dir=tmp_dir):
            pass
    with pytest.raises(PasswordError, match=r"wrong password for 'test80_01\.zip'"):
        with open_clip(loc, passwords=Passwords.parse("test-1e.zip=outer,test80_01.zip=bad"), tmp_dir=tmp_dir):
            pass


def test_password_checks_without_reading_data(tmp_path):
    outer, _ = encrypted_release(tmp_path)
    with open_archive(outer) as archive:
        archive.check_readable(Passwords.parse("test-1e.zip=outer"))
        with pytest.raises(PasswordError, match="wrong password for 'test-1e.zip'"):
            archive.check_readable(Passwords.parse("test-1e.zip=nope"))
        archive.peek_nested("test-1/test80_01.zip", Passwords.parse("outer,test80_01.zip=inner"))
        with pytest.raises(PasswordError, match=r"test-1e\.zip::test-1/test80_01\.zip: member .* no password"):
            archive.peek_nested("test-1/test80_01.zip", Passwords.parse("test-1e.zip=outer"))


def test_aes_and_unsupported_compression_are_detected(tmp_path, tmp_dir):
    path = write_zip(tmp_path / "aes.zip", [("abcdefghijk.000.mp4", b"x")], aes=True)
    with pytest.raises(UnsupportedArchiveError, match="AES-encrypted zip"):
        with open_clip(make_locator(path, "abcdefghijk.000.mp4"), passwords="pw", tmp_dir=tmp_dir):
            pass
    with open_archive(path) as archive, pytest.raises(UnsupportedArchiveError, match="AES"):
        archive.check_readable(Passwords())
    deflate64 = write_zip(tmp_path / "d64.zip", [("abcdefghijk.000.mp4", b"x")], method=9)
    with open_archive(deflate64) as archive, pytest.raises(UnsupportedArchiveError, match="compression method 9"):
        archive.check_readable(Passwords())


@pytest.mark.skipif(shutil.which("zip") is None, reason="no system `zip` binary to cross-check ZipCrypto with")
def test_archive_encrypted_by_system_zip(tmp_path, tmp_dir):
    clip = tmp_path / "abcdefghijk.000.mp4"
    clip.write_bytes(clip_bytes("sys"))
    subprocess.run(["zip", "-q", "-P", "pw", "-j", str(tmp_path / "sys.zip"), str(clip)], check=True)
    with open_clip(make_locator(tmp_path / "sys.zip", clip.name), passwords="pw", tmp_dir=tmp_dir) as path:
        assert path.read_bytes() == clip.read_bytes()


def _digest_member(opener, source):
    with opener(source) as path:
        return hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_clip_partial_works_in_worker_processes(tmp_path, tmp_dir):
    outer, names = encrypted_release(tmp_path)
    opener = functools.partial(open_clip, passwords=Passwords.parse("test-1e.zip=outer,test80_01.zip=inner"),
                               tmp_dir=str(tmp_dir))
    sources = [make_locator(outer, "test-1/test80_01.zip", n) for n in names]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        digests = list(pool.map(_digest_member, [opener] * len(sources), sources))
    assert digests == [hashlib.sha256(clip_bytes(n)).hexdigest() for n in names]
    assert [p for p in os.listdir(tmp_dir) if p.startswith("clip-")] == []  # temp clips deleted
