"""Nested-zip reading, passwords, member-name safety, open_clip.

Encrypted fixtures come from :func:`write_zip`, a tiny zip writer in this file that can
encrypt members with ZipCrypto (PKWARE APPNOTE.TXT 6.1); Python's own zipfile decrypts
its output in ``test_writer_output_is_read_by_zipfile``, so the writer is checked
independently of the code under test. If a system ``zip`` binary exists, one test also
reads an archive it encrypted (skipped otherwise: no system tool is required).
"""
import concurrent.futures
import errno
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

import fi_data.archives as archives
from fi_data.archives import (FREE_SPACE_MARGIN, LOCATOR_SEP, MAX_COMPRESSION_RATIO, PASSWORDS_ENV, Archive,
                              ArchiveError, InsufficientSpaceError, MemberTooLargeError, Passwords, PasswordError,
                              Spooler, UnsafeMemberError, UnsupportedArchiveError, ZipCryptoKeys, check_member_name,
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


# --- size limits: zip bombs, lying headers, free space ------------------------------------------

def set_declared_size(path, file_size, crc=None):
    """Rewrite the uncompressed size (and optionally the CRC) that the local and central headers
    of a one-member zip declare."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):  # offset of the CRC field
        at = data.index(signature) + offset
        if crc is not None:
            data[at:at + 4] = struct.pack("<L", crc)
        data[at + 8:at + 12] = struct.pack("<L", file_size)  # CRC, compressed size, uncompressed size
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def opened_members(monkeypatch):
    """Names of the members whose data stream was opened (a refusal before streaming opens none)."""
    names = []
    real = Archive.open_member
    def open_member(self, info, passwords):
        names.append(info.filename)
        return real(self, info, passwords)

    monkeypatch.setattr(Archive, "open_member", open_member)
    return names


def test_zip_bomb_clip_is_refused_before_any_byte_is_written(tmp_path, tmp_dir, opened_members):
    zeros = bytes(50 * 2**20)  # 50 MiB of zeros deflate to ~50 KB: ratio ~1000
    bomb = write_zip(tmp_path / "bomb.zip", [("abcdefghijk.000.mp4", zeros)], method=zipfile.ZIP_DEFLATED)
    packed = zipfile.ZipFile(bomb).getinfo("abcdefghijk.000.mp4").compress_size
    assert len(zeros) / packed > MAX_COMPRESSION_RATIO
    with pytest.raises(MemberTooLargeError) as info:
        with open_clip(make_locator(bomb, "abcdefghijk.000.mp4"), tmp_dir=tmp_dir):
            pass
    message = str(info.value)
    assert message.startswith(f"{bomb}: refusing member 'abcdefghijk.000.mp4': it declares 52,428,800 bytes from "
                              f"{packed:,} compressed (ratio {len(zeros) / packed:,.0f}:1")
    assert "zip bomb" in info.value.reason
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is MemberTooLargeError and (str(back), back.reason) == (message, info.value.reason)
    assert opened_members == []  # refused from the header alone: not a byte was decompressed
    assert os.listdir(tmp_dir) == []


def test_member_declaring_more_than_the_limit_is_refused(tmp_path, tmp_dir, opened_members):
    path = write_zip(tmp_path / "huge.zip", [("abcdefghijk.000.mp4", clip_bytes("huge"))])
    set_declared_size(path, 3 * 2**30)  # a 3 GiB clip: over MAX_CLIP_BYTES (2 GiB)
    with pytest.raises(MemberTooLargeError, match=r"huge\.zip: refusing member 'abcdefghijk\.000\.mp4': it declares "
                                                  r"3,221,225,472 bytes \(3,072\.0 MiB\), more than the 2,048\.0 "
                                                  r"MiB accepted for a clip"):
        with open_clip(make_locator(path, "abcdefghijk.000.mp4"), tmp_dir=tmp_dir):
            pass
    assert opened_members == [] and os.listdir(tmp_dir) == []
    small = write_zip(tmp_path / "small.zip", [("abcdefghijk.000.mp4", bytes(2**20))], method=zipfile.ZIP_DEFLATED)
    with open_clip(make_locator(small, "abcdefghijk.000.mp4"), tmp_dir=tmp_dir) as clip:
        assert clip.read_bytes() == bytes(2**20)  # 1 MiB of zeros: ratio ~1000 but too small to matter


def test_header_declaring_less_than_the_data_is_refused(tmp_path, tmp_dir):
    data = clip_bytes("liar") * 4  # 6,000 bytes; the header says 1,000
    path = set_declared_size(write_zip(tmp_path / "liar.zip", [("abcdefghijk.000.mp4", data)]), 1000)
    with pytest.raises(ArchiveError, match=r"liar\.zip::abcdefghijk\.000\.mp4: member is corrupt \(Bad CRC-32"):
        with open_clip(make_locator(path, "abcdefghijk.000.mp4"), tmp_dir=tmp_dir):
            pass
    assert os.listdir(tmp_dir) == []


def test_copy_stops_when_more_bytes_come_out_than_declared(tmp_path, tmp_dir, monkeypatch):
    """zipfile itself cuts a member at its declared size; the copy does not rely on it."""
    path = write_zip(tmp_path / "liar.zip", [("abcdefghijk.000.mp4", b"x" * 1000)])
    given = []

    class Liar(io.BytesIO):
        def read(self, n=-1):
            data = super().read(n)
            given.append(len(data))
            return data

    monkeypatch.setattr(Archive, "open_member", lambda self, info, pw: Liar(b"y" * 5 * 2**20))  # 5 MiB, not 1,000
    with pytest.raises(MemberTooLargeError, match=r"liar\.zip: refusing member 'abcdefghijk\.000\.mp4' \(a clip\): "
                                                  r"it gives more than the 1,000 bytes its header declares"):
        with open_clip(make_locator(path, "abcdefghijk.000.mp4"), tmp_dir=tmp_dir):
            pass
    assert sum(given) == 1001  # read no further than one byte past the declared size
    assert os.listdir(tmp_dir) == []  # the partial copy is deleted

    out = io.BytesIO()
    src = io.BytesIO(b"z" * 3000)
    assert archives._copy_member(src, out, 3000, "a clip", "a.zip", "m") == 3000 and out.getvalue() == b"z" * 3000
    with pytest.raises(MemberTooLargeError) as info:
        archives._copy_member(io.BytesIO(b"z" * 3001), io.BytesIO(), 3000, "a clip", "a.zip", "m")
    assert info.value.reason == "it gives more than the 3,000 bytes its header declares (a lying header)"


def test_inner_archive_bomb_is_not_spooled(tmp_path, tmp_dir, opened_members):
    inner = member_bytes("training80_01.zip", [("abcdefghijk.000.mp4", bytes(20 * 2**20))])  # stored zeros
    outer = write_zip(tmp_path / "train-1.zip", [("training80_01.zip", inner)], method=zipfile.ZIP_DEFLATED)
    expected = (rf"train-1\.zip: refusing member 'training80_01\.zip': it declares {len(inner):,} bytes from "
                rf"[0-9,]+ compressed \(ratio 1,0[0-9]{{2}}:1")  # ~1,020:1
    with pytest.raises(MemberTooLargeError, match=expected):
        with open_clip(make_locator(outer, "training80_01.zip", "abcdefghijk.000.mp4"), tmp_dir=tmp_dir):
            pass
    assert opened_members == [] and os.listdir(tmp_dir) == []


def test_too_little_free_space_is_refused_naming_folder_and_sizes(tmp_path, tmp_dir, monkeypatch, opened_members):
    outer, names = nested_release(tmp_path, inner_method=zipfile.ZIP_DEFLATED)
    clip_loc = make_locator(tmp_path / "c.zip", names[0])
    write_zip(tmp_path / "c.zip", [(names[0], clip_bytes(names[0]))])
    free = 10 * 2**20
    monkeypatch.setattr(archives, "_free_bytes", lambda folder: free)
    needed = len(clip_bytes(names[0])) + FREE_SPACE_MARGIN
    with pytest.raises(InsufficientSpaceError) as info:
        with open_clip(clip_loc, tmp_dir=tmp_dir):
            pass
    error = info.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC and isinstance(error, ArchiveError)
    assert (error.folder, error.needed, error.free) == (tmp_dir, needed, free)
    assert str(error) == (f"{tmp_dir}: copying the clip {clip_loc} needs {needed / 2**20:,.1f} MiB free on this disk "
                          f"(its 0.0 MiB and a 64.0 MiB margin), only 10.0 MiB are free; free space or choose "
                          "another tmp_dir")
    with pytest.raises(InsufficientSpaceError, match=r"copying the inner archive .*train-1\.zip::training80_01\.zip "
                                                     r"needs 64\.0 MiB free on this disk .* only 10\.0 MiB are free"):
        with open_clip(make_locator(outer, "training80_01.zip", names[0]), tmp_dir=tmp_dir):
            pass
    assert opened_members == [] and os.listdir(tmp_dir) == []
    back = pickle.loads(pickle.dumps(error))  # crosses process boundaries intact
    assert type(back) is InsufficientSpaceError and str(back) == str(error) and back.errno == errno.ENOSPC
    free = needed  # exactly enough
    with open_clip(clip_loc, tmp_dir=tmp_dir) as path:
        assert path.read_bytes() == clip_bytes(names[0])


def test_feature_cache_records_a_refused_member_as_one_skipped_clip(tmp_path, tmp_dir, monkeypatch):
    """The cache's worker turns a refusal into status ``open_failed`` with the reason, and a
    lack of space into its DiskFullError (the machine's fault: the clip is retried later)."""
    from fi_data import cache

    bomb = write_zip(tmp_path / "bomb.zip", [("abcdefghijk.000.mp4", bytes(50 * 2**20))], method=zipfile.ZIP_DEFLATED)
    parts = tmp_path / "parts"
    parts.mkdir()
    job = cache._Job(cache.PreprocessParams(), parts, tmp_dir, functools.partial(open_clip, tmp_dir=tmp_dir), 30.0)
    assert job.run("abcdefghijk.000", make_locator(bomb, "abcdefghijk.000.mp4"))[:2] == ("abcdefghijk.000",
                                                                                         "open_failed")
    meta = cache._read_meta(parts / "abcdefghijk.000.npz")
    assert meta["status"] == "open_failed"
    assert meta["detail"].startswith(f"MemberTooLargeError: {bomb}: refusing member 'abcdefghijk.000.mp4'")
    assert os.listdir(tmp_dir) == []
    full = InsufficientSpaceError(tmp_dir, 100 * 2**20, 2**20, "the clip x")
    machine = cache._machine_error(full, tmp_dir, "opening clip x")
    assert isinstance(machine, cache.DiskFullError) and "needs 100.0 MiB free" in str(machine)
