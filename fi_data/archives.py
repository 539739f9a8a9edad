"""Reading clips inside (nested) zip archives in place; archive passwords; member-name safety.

The release nests archives (``train-1.zip`` holds ``training80_01.zip`` which holds the
``.mp4`` clips; ``test-1e.zip`` holds ``test-1/test80_01.zip``). Nothing here extracts a
whole archive:

* an inner archive stored uncompressed and unencrypted in its parent (as in the release)
  is opened *in place*: a read-only window onto the parent's bytes at the member's data
  offset, so listing it or reading one clip costs a few seeks;
* an inner archive that is compressed or encrypted in its parent cannot be seeked, so it
  is streamed once to a temporary file in the toolkit's ``tmp_dir`` and opened from there
  (:func:`open_clip` keeps the last two such spools per process, so the clips of one inner
  archive are not decrypted again and again; they are deleted at exit, and spools left by
  dead processes are removed the next time one is made);
* one clip is streamed to a temporary ``.mp4`` in ``tmp_dir`` for decoding and deleted when
  the caller is done.

**Size limits.** Before a member is copied out, its declared size and compression ratio
are checked (:func:`check_member_size`): a clip over :data:`MAX_CLIP_BYTES`, an inner archive
over :data:`MAX_INNER_ARCHIVE_BYTES`, or a member over :data:`RATIO_CHECK_MIN_BYTES` that
declares more than :data:`MAX_COMPRESSION_RATIO` times its compressed size is refused
(:class:`MemberTooLargeError`) without a byte being written. While copying, more bytes than
the header declared stop the copy (a lying header), and before copying the destination's
free space is checked (:class:`InsufficientSpaceError`, an ``OSError`` with ``ENOSPC``).
Each refusal is an :class:`ArchiveError` naming the archive and member (the space one also
the folder, the space needed and the space free), so discovery records the member as a
problem and skips it, and the feature cache records the clip as ``open_failed`` (a lack of
space is the machine's fault there: the build stops and the clip is retried on the rerun);
one bad member never stops a job.

Nesting deeper than :data:`MAX_ARCHIVE_DEPTH` archives is refused. Member names that are
absolute, contain a ``..`` component, a drive letter, NUL or the locator separator are
refused (:class:`UnsafeMemberError`); temporary files get names chosen here, never member
names, so nothing is ever written outside ``tmp_dir``.

**Locators.** A clip inside archives is named by a string
``"<archive path>::<member>[::<member>...]"``, e.g.
``"/data/train-1.zip::training80_01.zip::abc.001.mp4"`` (:data:`LOCATOR_SEP` = ``"::"``,
which never occurs in the release's file names and is refused in member names). If the
archive's own path contains ``"::"``, the shortest prefix that is an existing file is the
archive (:func:`split_locator`).

**Passwords.** :class:`Passwords` holds what the user gave (a flag, the environment variable
:data:`PASSWORDS_ENV`, a passwords file); nothing is hard-coded. Python's ``zipfile`` reads
traditional PKWARE encryption (ZipCrypto), decrypting in pure Python (about 1.7 MB/s on
the development machine, so decrypting the encrypted test archives is slow; extracting them
once with ``unzip -P`` and pointing the toolkit at the folder is faster). AES-encrypted
zips (WinZip AES, compression method 99) are not supported and raise
:class:`UnsupportedArchiveError`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fnmatch
import hashlib
import io
import logging
import os
import posixpath
import re
import shutil
import struct
import tempfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

from fi_data.errors import UserError

log = logging.getLogger(__name__)

LOCATOR_SEP = "::"
"""Separator between an archive path and the member names in a locator string."""

MAX_ARCHIVE_DEPTH = 3
"""Most archives nested in one another that are read (``a.zip::b.zip::c.zip::x.mp4``)."""

PASSWORDS_ENV = "FI_PASSWORDS"
"""Environment variable holding passwords, same syntax as the flag (:meth:`Passwords.parse`)."""

DEFAULT_TMP_DIR = Path(__file__).resolve().parents[1] / ".fi_cache" / "tmp"
"""The toolkit's own folder for temporary clips and spooled inner archives (git-ignored)."""

AES_METHOD = 99
"""Zip compression method id that marks WinZip AES encryption (APPNOTE.TXT 4.4.5)."""

MAX_CLIP_BYTES = 2 * 2**30
"""Largest uncompressed size (bytes) of a clip member that :func:`open_clip` copies out: 2 GiB.
Release clips are 15-second videos of 2-5 MB; 2 GiB is ~400 times that and still holds a
user's own clip zipped for prediction (30 minutes of 1080p at 8 Mbit/s is ~1.8 GB), while a
copy of that size fits any disk the toolkit's temporary folder is likely to be on."""

MAX_INNER_ARCHIVE_BYTES = 16 * 2**30
"""Largest uncompressed size (bytes) of an inner archive that is spooled to ``tmp_dir``: 16 GiB.
The release's inner archives (``training80_XX.zip``...) are ~300 MB and its whole outer
archives a few GB; 16 GiB is ~50 times an inner one and still bounds one spool."""

MAX_COMPRESSION_RATIO = 200
"""Largest accepted ratio of a member's declared uncompressed size to its compressed size.
H.264 video and AAC audio are already compressed: clips and zips of clips deflate to a ratio
near 1 (1.0-1.1); even text rarely passes 10. Deflate reaches ~1000 on constant data, which
is what zip bombs are made of, so 200 refuses bombs and leaves wide room for real members."""

RATIO_CHECK_MIN_BYTES = 2**20
"""Members declaring at most this many bytes (1 MiB) are never refused for their ratio:
whatever they expand to is small (a tiny text file of repeated lines may well reach 200:1)."""

FREE_SPACE_MARGIN = 64 * 2**20
"""Bytes (64 MiB) that must stay free on the destination's disk after a copy out of an
archive, so a copy never fills the disk to its last byte (logs and other writers need room)."""

_SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_COPY_CHUNK = 1 << 20


class ArchiveError(Exception):
    """A problem with one archive or member; the message names it."""


class PasswordError(ArchiveError):
    """An encrypted archive has no password, or the password given is wrong."""


class UnsupportedArchiveError(ArchiveError):
    """The archive uses something Python's zipfile cannot read (e.g. AES encryption)."""


class UnsafeMemberError(ArchiveError, ValueError):
    """A member name is absolute, climbs out with ``..``, or is otherwise unsafe."""


class MemberTooLargeError(ArchiveError):
    """A member declares an absurd size or compression ratio (checked before copying), or
    gives more bytes than its header declares (while copying); ``reason`` says which."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable, for worker processes
        return type(self), (str(self), self.reason)


class InsufficientSpaceError(ArchiveError, OSError):
    """The destination folder's disk has too little free space for a copy out of an archive.

    An ``OSError`` with ``errno.ENOSPC`` (so callers that blame the machine for a full disk
    do so) and an :class:`ArchiveError`; the message names the folder, the space needed and
    the space free. Attributes ``folder``, ``needed`` and ``free`` (bytes).
    """

    def __init__(self, folder, needed: int, free: int, what: str):
        super().__init__(errno.ENOSPC, f"{folder}: copying {what} needs {_mib(needed)} free on this disk "
                                       f"(its {_mib(needed - FREE_SPACE_MARGIN)} and a {_mib(FREE_SPACE_MARGIN)} "
                                       f"margin), only {_mib(free)} are free; free space or choose another tmp_dir")
        self.folder, self.needed, self.free, self.what = Path(folder), needed, free, what

    def __str__(self):
        return self.strerror

    def __reduce__(self):  # picklable, for worker processes
        return type(self), (self.folder, self.needed, self.free, self.what)


# ---------------------------------------------------------------------------------------
# Passwords

class Passwords:
    """Archive passwords supplied by the user.

    A password is looked up by the archive's base name (``"test-1e.zip"``,
    ``"test80_01.zip"``): an exact name first, then glob patterns (``"test80_*.zip"``,
    :mod:`fnmatch`) in the order given, then the default for all archives.

    Args:
        by_name: ``{archive name or glob pattern: password}``.
        default: password for every archive not named (or ``None``).

    The object is picklable (for worker processes); ``repr`` never shows a password.
    """

    def __init__(self, by_name: dict | None = None, default: str | None = None):
        self.by_name = dict(by_name or {})
        self.default = default

    @classmethod
    def parse(cls, spec: str, origin: str = "passwords") -> "Passwords":
        """Parse ``"PW"`` (one password for all archives) or ``"ARCHIVE=PW,ARCHIVE2=PW"``.

        Names are stripped of spaces, passwords are kept as typed. A password containing
        ``,`` or ``=`` cannot be written here: put it in a passwords file
        (:meth:`from_file`, e.g. a line ``*=pa,ss=word``).

        Raises:
            ValueError: an item has an empty archive name (message names ``origin``).
        """
        by_name, default = {}, None
        for item in spec.split(","):
            if not item:
                continue
            if "=" in item:
                name, pw = item.split("=", 1)
                if not name.strip():
                    raise UserError(f"{origin}: item {item!r} has no archive name before '='")
                by_name[name.strip()] = pw
            else:
                default = item
        return cls(by_name, default)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Passwords":
        """Read a passwords file: one ``ARCHIVE=PW`` per line (``*`` or a bare ``PW`` line
        for all archives); blank lines and lines starting with ``#`` are ignored. Only the
        line break is stripped, so passwords may hold spaces, ``,`` and ``=``.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: a line has an empty archive name (names file and line).
        """
        by_name, default = {}, None
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if "=" not in line:
                    default = line
                    continue
                name, pw = line.split("=", 1)
                if not name.strip():
                    raise UserError(f"{path}:{lineno}: no archive name before '='")
                by_name[name.strip()] = pw
        return cls(by_name, default)

    @classmethod
    def from_sources(cls, flag: str | None = None, file: str | os.PathLike | None = None,
                     environ: dict | None = None) -> "Passwords":
        """Merge the passwords file, then ``$FI_PASSWORDS``, then the flag (later ones win)."""
        environ = os.environ if environ is None else environ
        result = cls()
        if file:
            result = result.merged(cls.from_file(file))
        if environ.get(PASSWORDS_ENV):
            result = result.merged(cls.parse(environ[PASSWORDS_ENV], origin=f"${PASSWORDS_ENV}"))
        if flag:
            result = result.merged(cls.parse(flag, origin="--passwords"))
        return result

    def merged(self, other: "Passwords") -> "Passwords":
        """A new object with ``other``'s entries overriding this one's."""
        return Passwords({**self.by_name, **other.by_name},
                         other.default if other.default is not None else self.default)

    def get(self, archive: str) -> bytes | None:
        """The password (UTF-8 bytes) for the archive with this name or path, or ``None``."""
        name = posixpath.basename(str(archive).replace("\\", "/"))
        pw = self.by_name.get(name)
        if pw is None:
            pw = next((p for pat, p in self.by_name.items() if fnmatch.fnmatchcase(name, pat)), self.default)
        return None if pw is None else pw.encode("utf-8")

    def __bool__(self):
        return bool(self.by_name) or self.default is not None

    def __eq__(self, other):
        return isinstance(other, Passwords) and (self.by_name, self.default) == (other.by_name, other.default)

    def __repr__(self):
        return f"Passwords(archives={sorted(self.by_name)}, default={'set' if self.default is not None else None})"


def resolve_passwords(passwords) -> Passwords:
    """``None`` -> passwords from ``$FI_PASSWORDS`` (if set); a ``str`` -> :meth:`Passwords.parse`;
    a dict -> ``Passwords(dict)``; a :class:`Passwords` is returned as is."""
    if passwords is None:
        return Passwords.from_sources()
    if isinstance(passwords, Passwords):
        return passwords
    if isinstance(passwords, str):
        return Passwords.parse(passwords)
    if isinstance(passwords, dict):
        return Passwords(passwords)
    raise TypeError(f"passwords: expected None, str, dict or Passwords, got {type(passwords).__name__}")


# ---------------------------------------------------------------------------------------
# Sizes: limits checked before copying a member out, free space, bounded copies

def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def check_member_size(info: zipfile.ZipInfo, archive: str, limit: int, kind: str) -> None:
    """Refuse a member whose declared size or compression ratio is absurd, before reading it.

    Args:
        info: the member (its ``file_size`` and ``compress_size`` in bytes, from the header).
        archive: the archive's locator, for the message.
        limit: the largest ``file_size`` accepted, in bytes (:data:`MAX_CLIP_BYTES`,
            :data:`MAX_INNER_ARCHIVE_BYTES`).
        kind: what the member is, for the message (``"a clip"``).

    Raises:
        MemberTooLargeError: ``file_size > limit``, or ``file_size`` over
            :data:`RATIO_CHECK_MIN_BYTES` and more than :data:`MAX_COMPRESSION_RATIO` times
            ``compress_size``; the message names the archive and the member.
    """
    size, packed = info.file_size, info.compress_size
    reason = None
    if size > limit:
        reason = f"it declares {size:,} bytes ({_mib(size)}), more than the {_mib(limit)} accepted for {kind}"
    elif size > RATIO_CHECK_MIN_BYTES and size > MAX_COMPRESSION_RATIO * packed:
        ratio = f"{size / packed:,.0f}:1" if packed else "infinite"
        reason = (f"it declares {size:,} bytes from {packed:,} compressed (ratio {ratio}, over the "
                  f"{MAX_COMPRESSION_RATIO}:1 accepted): a zip bomb or a damaged header")
    if reason:
        raise MemberTooLargeError(f"{archive}: refusing member {info.filename!r}: {reason}", reason)


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_free_space(folder: str | os.PathLike, size: int, what: str) -> None:
    """Refuse to copy ``size`` bytes into ``folder`` unless its disk keeps
    :data:`FREE_SPACE_MARGIN` bytes free afterwards.

    Raises:
        InsufficientSpaceError: naming the folder, the bytes needed and the bytes free.
    """
    needed, free = size + FREE_SPACE_MARGIN, _free_bytes(Path(folder))
    if free < needed:
        raise InsufficientSpaceError(folder, needed, free, what)


def _copy_member(src, out, declared: int, what: str, archive: str, member: str) -> int:
    """Copy ``src`` to ``out``, never more than ``declared`` bytes; returns the bytes copied.

    Reads at most ``declared + 1`` bytes, so a member giving more than its header declared is
    detected without writing the excess.

    Raises:
        MemberTooLargeError: more than ``declared`` bytes came out (a lying header).
    """
    total = 0
    while True:
        chunk = src.read(min(_COPY_CHUNK, declared - total + 1))
        if not chunk:
            return total
        total += len(chunk)
        if total > declared:
            reason = f"it gives more than the {declared:,} bytes its header declares (a lying header)"
            raise MemberTooLargeError(f"{archive}: refusing member {member!r} ({what}): {reason}", reason)
        out.write(chunk)


# ---------------------------------------------------------------------------------------
# Locators and member names

_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def check_member_name(name: str, archive: str = "archive") -> None:
    """Refuse member names that could point outside a folder or break locators.

    Raises:
        UnsafeMemberError: the name is empty, absolute (``/x``, ``\\x``, ``C:x``), has a
            ``..`` component, a NUL byte or contains :data:`LOCATOR_SEP`; the message names
            the archive and the member.
    """
    norm = name.replace("\\", "/")
    reason = None
    if not name or "\x00" in name:
        reason = "an empty name or a NUL byte"
    elif norm.startswith("/") or _DRIVE_RE.match(norm):
        reason = "an absolute path"
    elif ".." in norm.split("/"):
        reason = "a '..' component"
    elif LOCATOR_SEP in name:
        reason = f"the locator separator {LOCATOR_SEP!r}"
    if reason:
        error = UnsafeMemberError(f"{archive}: refusing member {name!r}: its name has {reason}")
        error.reason = f"its name has {reason}"
        raise error


def make_locator(path: str | os.PathLike, *members: str) -> str:
    """``make_locator("/d/train-1.zip", "training80_01.zip", "x.000.mp4")`` ->
    ``"/d/train-1.zip::training80_01.zip::x.000.mp4"``; a plain path without members."""
    return LOCATOR_SEP.join([str(path), *members])


def split_locator(source: str | os.PathLike) -> tuple[Path, tuple[str, ...]]:
    """Inverse of :func:`make_locator`: ``(archive or file path, member names)``.

    An existing file named by the whole string is a plain file even if the name contains
    ``"::"``; otherwise the shortest ``"::"``-prefix naming an existing file is the archive.

    Raises:
        FileNotFoundError: no prefix of the locator is an existing file.
    """
    source = str(source)
    if LOCATOR_SEP not in source or os.path.isfile(source):
        return Path(source), ()
    parts = source.split(LOCATOR_SEP)
    for i in range(1, len(parts)):
        candidate = LOCATOR_SEP.join(parts[:i])
        if os.path.isfile(candidate):
            return Path(candidate), tuple(parts[i:])
    raise FileNotFoundError(f"{source}: neither a file nor '<archive>{LOCATOR_SEP}<member>' of an existing archive")


# ---------------------------------------------------------------------------------------
# ZipCrypto header check (PKWARE APPNOTE.TXT 6.1), for inner archives that cannot be seeked

def _crc_step(crc: int, byte: int) -> int:
    """One byte of the raw CRC-32 table update that ZipCrypto uses (zlib adds pre/post inversion)."""
    return zlib.crc32(bytes((byte,)), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


class ZipCryptoKeys:
    """The three-key state of traditional PKWARE encryption (APPNOTE.TXT section 6.1.5).

    Used here to check a password against an encryption header read from a stream; the
    test suite also uses it to write encrypted fixtures.
    """

    def __init__(self, password: bytes):
        self.k0, self.k1, self.k2 = 0x12345678, 0x23456789, 0x34567890
        for b in password:
            self.update(b)

    def update(self, plain_byte: int) -> None:
        self.k0 = _crc_step(self.k0, plain_byte)
        self.k1 = ((self.k1 + (self.k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        self.k2 = _crc_step(self.k2, self.k1 >> 24)

    def _stream_byte(self) -> int:
        t = (self.k2 | 2) & 0xFFFF
        return ((t * (t ^ 1)) >> 8) & 0xFF

    def decrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for c in data:
            p = c ^ self._stream_byte()
            self.update(p)
            out.append(p)
        return bytes(out)

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for p in data:
            out.append(p ^ self._stream_byte())
            self.update(p)
        return bytes(out)


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra len


def _peek_first_member(stream, archive: str, passwords: "Passwords") -> None:
    """Check the first local header of a zip read from a non-seekable stream.

    Verifies the password of the first member (12-byte encryption header, check byte =
    CRC high byte, or modification-time high byte when bit 3 is set) and refuses AES, so
    a wrong password for an inner archive is reported before the archive is spooled.
    """
    head = stream.read(_LOCAL_HEADER.size)
    if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        return  # not a local header first (empty zip, or odd layout): checked when spooled
    _, _, flags, method, mtime, _, crc, _, _, n, m = _LOCAL_HEADER.unpack(head)
    name = stream.read(n).decode("utf-8" if flags & 0x800 else "cp437", "replace")
    stream.read(m)
    if method == AES_METHOD:
        raise UnsupportedArchiveError(_aes_message(archive))
    if not flags & 1:
        return
    pwd = passwords.get(archive)
    if pwd is None:
        raise PasswordError(_no_password_message(archive, name))
    header = ZipCryptoKeys(pwd).decrypt(stream.read(12))
    check = (mtime >> 8) & 0xFF if flags & 0x8 else crc >> 24
    if len(header) < 12 or header[11] != check:
        raise PasswordError(_bad_password_message(archive, name))


def _no_password_message(archive: str, member: str) -> str:
    return (f"{archive}: member {member!r} is encrypted and no password was given for "
            f"{posixpath.basename(archive.split(LOCATOR_SEP)[-1])!r}; pass it with --passwords "
            f"'NAME=PASSWORD', the {PASSWORDS_ENV} environment variable, or a passwords file")


def _bad_password_message(archive: str, member: str) -> str:
    return (f"{archive}: wrong password for {posixpath.basename(archive.split(LOCATOR_SEP)[-1])!r} "
            f"(checked on member {member!r})")


def _aes_message(archive: str) -> str:
    return (f"{archive}: AES-encrypted zip (method 99), which Python's zipfile cannot read; extract it "
            "with 7-Zip or unzip and point the toolkit at the extracted folder")


# ---------------------------------------------------------------------------------------
# Opening archives, nested ones in place

class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of ``base`` starting at ``start``."""

    def __init__(self, base, start: int, size: int):
        super().__init__()
        self._base, self._start, self._size, self._pos = base, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._base.seek(self._start + self._pos)
        got = self._base.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


class Archive:
    """One opened zip archive, possibly nested; use as a context manager or call ``close()``.

    Attributes:
        zip: the :class:`zipfile.ZipFile`.
        locator: its locator (``"/d/train-1.zip"`` or ``"/d/train-1.zip::training80_01.zip"``).
        depth: 1 for an archive on disk, 2 inside another one, ...
        in_place: whether it is read in place (no temporary copy).
    """

    def __init__(self, zf: zipfile.ZipFile, fileobj, locator: str, depth: int, in_place: bool, on_close=None):
        self.zip, self._fileobj, self.locator, self.depth, self.in_place = zf, fileobj, locator, depth, in_place
        self._on_close = on_close

    @property
    def name(self) -> str:
        """Base name of the archive (used to look up its password)."""
        return posixpath.basename(self.locator.split(LOCATOR_SEP)[-1].replace("\\", "/"))

    def close(self):
        self.zip.close()
        if self._fileobj is not None:
            self._fileobj.close()
        if self._on_close:
            self._on_close()
            self._on_close = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def info(self, member: str) -> zipfile.ZipInfo:
        """The member's ZipInfo after the safety check; FileNotFoundError if absent."""
        check_member_name(member, self.locator)
        try:
            return self.zip.getinfo(member)
        except KeyError:
            raise FileNotFoundError(f"{self.locator}: no member {member!r}") from None

    def open_member(self, info: zipfile.ZipInfo, passwords: Passwords):
        """Open a member for reading, turning zipfile's errors into ones that name the archive.

        Raises:
            UnsupportedArchiveError: AES or another compression method zipfile lacks.
            PasswordError: encrypted and no password, or a wrong one.
        """
        if info.compress_type == AES_METHOD:
            raise UnsupportedArchiveError(_aes_message(self.locator))
        if info.compress_type not in _SUPPORTED_METHODS:
            raise UnsupportedArchiveError(
                f"{self.locator}: member {info.filename!r} uses compression method {info.compress_type}, "
                "which Python's zipfile cannot read")
        pwd = passwords.get(self.name) if info.flag_bits & 1 else None
        if info.flag_bits & 1 and pwd is None:
            raise PasswordError(_no_password_message(self.locator, info.filename))
        try:
            return self.zip.open(info, pwd=pwd)
        except RuntimeError as exc:  # zipfile: "Bad password for file ..."
            raise PasswordError(_bad_password_message(self.locator, info.filename)) from exc

    def check_readable(self, passwords: Passwords) -> None:
        """Check that every member can be read, without reading any data: its compression
        method is supported, and the password of each encrypted member passes the check of
        its 12-byte encryption header.

        Each member's check byte lets a wrong password through with probability 1/256, so
        checking all of them makes a false pass practically impossible.

        Raises:
            PasswordError, UnsupportedArchiveError: as :meth:`open_member`.
        """
        for info in self.zip.infolist():
            if info.flag_bits & 1 or info.compress_type not in _SUPPORTED_METHODS:
                self.open_member(info, passwords).close()

    def can_open_in_place(self, info: zipfile.ZipInfo) -> bool:
        """A member archive can be read in place if stored without compression or encryption."""
        return info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1

    def open_nested(self, member: str, passwords: Passwords, spooler: "Spooler") -> "Archive":
        """Open the member archive ``member``: in place if possible, else via ``spooler``.

        Raises:
            ArchiveError: nesting deeper than :data:`MAX_ARCHIVE_DEPTH`, or a broken member.
            PasswordError, UnsupportedArchiveError, UnsafeMemberError, FileNotFoundError.
        """
        locator = make_locator(self.locator, member)
        if self.depth >= MAX_ARCHIVE_DEPTH:
            raise ArchiveError(f"{locator}: archives nested deeper than {MAX_ARCHIVE_DEPTH} levels are not read")
        info = self.info(member)
        if self.can_open_in_place(info):
            window = _Window(self._fileobj, self._data_offset(info), info.file_size)
            return Archive(_open_zip(window, locator), window, locator, self.depth + 1, True)
        path, release = spooler.spool(self, info, passwords, locator)
        fileobj = open(path, "rb")
        return Archive(_open_zip(fileobj, locator), fileobj, locator, self.depth + 1, False, release)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        self._fileobj.seek(info.header_offset)
        head = self._fileobj.read(_LOCAL_HEADER.size)
        if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            raise ArchiveError(f"{self.locator}: member {info.filename!r} has no valid local header")
        n, m = _LOCAL_HEADER.unpack(head)[-2:]
        return info.header_offset + _LOCAL_HEADER.size + n + m

    def peek_nested(self, member: str, passwords: Passwords) -> None:
        """Check a member archive that cannot be opened in place without spooling it: the
        password (and AES) of its first member, read from the start of the stream."""
        with self.open_member(self.info(member), passwords) as stream:
            _peek_first_member(stream, make_locator(self.locator, member), passwords)


def _open_zip(fileobj, locator: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        fileobj.close()
        raise ArchiveError(f"{locator}: not a readable zip archive ({exc})") from exc


def open_archive(path: str | os.PathLike) -> Archive:
    """Open a zip archive on disk (depth 1).

    Raises:
        ArchiveError: the file is not a readable zip (truncated download, not a zip).
    """
    fileobj = open(path, "rb")
    return Archive(_open_zip(fileobj, str(path)), fileobj, str(path), 1, True)


# ---------------------------------------------------------------------------------------
# Spooling non-seekable inner archives to tmp_dir

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMPORARY_RE = re.compile(r"^[a-z]+-(\d+)-")
"""Names of this toolkit's temporary files and folders in a ``tmp_dir``: ``<kind>-<pid>-...``
(``spool-`` inner archives, ``clip-`` clips, ``decode-`` ffmpeg scratch)."""


class Spooler:
    """Streams member archives that cannot be read in place into ``tmp_dir``.

    ``keep=0``: every spool is deleted when its archive is closed (discovery).
    ``keep=k``: the last ``k`` spools stay for reuse by later opens in this process
    (:func:`open_clip`), and are deleted at exit.
    """

    def __init__(self, tmp_dir: str | os.PathLike, keep: int = 0):
        self.tmp_dir, self.keep = Path(tmp_dir), keep
        self._cache: OrderedDict[tuple, list] = OrderedDict()  # key -> [path, users]
        self._lock = threading.Lock()

    def _key(self, locator: str, passwords: Passwords) -> tuple:
        """The archive file's identity, the member chain, and the passwords used (so a spool
        decrypted with one set of passwords is never served to a caller without them)."""
        outer = split_locator(locator)[0]
        st = os.stat(outer)
        secret = hashlib.sha256(repr((sorted(passwords.by_name.items()), passwords.default)).encode()).hexdigest()
        return os.path.realpath(outer), st.st_size, st.st_mtime_ns, locator, secret

    def spool(self, parent: Archive, info: zipfile.ZipInfo, passwords: Passwords, locator: str):
        """Return ``(path, release)``: the spooled copy of member ``info`` of ``parent``.

        Raises:
            MemberTooLargeError: the member declares more than :data:`MAX_INNER_ARCHIVE_BYTES`
                or an absurd ratio (nothing written), or gives more bytes than declared.
            InsufficientSpaceError: ``tmp_dir``'s disk lacks the space (nothing written).
            ArchiveError: the member is corrupt. PasswordError, UnsupportedArchiveError.
        """
        key = self._key(locator, passwords) if self.keep else None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                entry = self._cache[key]
                entry[1] += 1
                return entry[0], lambda: self._release(key)
        check_member_size(info, parent.locator, MAX_INNER_ARCHIVE_BYTES, "an inner archive")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.tmp_dir)
        check_free_space(self.tmp_dir, info.file_size, f"the inner archive {locator}")
        fd, name = tempfile.mkstemp(prefix=f"spool-{os.getpid()}-", suffix=".zip", dir=self.tmp_dir)
        log.info("copying %s (%.1f MB) to a temporary file to read it%s", locator, info.file_size / 1e6,
                 " (decrypting in pure Python: slow)" if info.flag_bits & 1 else "")
        try:
            with os.fdopen(fd, "wb") as out, parent.open_member(info, passwords) as src:
                _copy_member(src, out, info.file_size, "an inner archive", parent.locator, info.filename)
        except BaseException as exc:
            os.unlink(name)
            if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError)):
                raise ArchiveError(f"{locator}: archive member is corrupt ({exc})") from exc
            raise
        path = Path(name)
        if not self.keep:
            return path, lambda: path.unlink(missing_ok=True)
        with self._lock:
            self._cache[key] = [path, 1]
            self._evict()
        return path, lambda: self._release(key)

    def _release(self, key):
        with self._lock:
            if key in self._cache:
                self._cache[key][1] -= 1
            self._evict()

    def _evict(self):
        for key in list(self._cache):
            if len(self._cache) <= self.keep:
                break
            path, users = self._cache[key]
            if users <= 0:
                path.unlink(missing_ok=True)
                del self._cache[key]

    def clear(self) -> None:
        """Delete every spool not in use."""
        with self._lock:
            for key, (path, users) in list(self._cache.items()):
                if users <= 0:
                    path.unlink(missing_ok=True)
                    del self._cache[key]


def remove_stale_temporaries(tmp_dir: str | os.PathLike) -> int:
    """Delete the temporary files and folders in ``tmp_dir`` (named ``<kind>-<pid>-...``) of
    processes that no longer run: killed jobs, and preprocessing workers, which exit without
    running ``atexit`` handlers. Files of running processes are left alone.

    Returns:
        The number of entries deleted (0 when ``tmp_dir`` does not exist).
    """
    tmp_dir, removed = Path(tmp_dir), 0
    if not tmp_dir.is_dir():
        return 0
    for p in tmp_dir.iterdir():
        m = _TEMPORARY_RE.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    return removed


_SPOOLERS: dict[Path, Spooler] = {}


def _process_spooler(tmp_dir: Path) -> Spooler:
    """The per-process, per-tmp_dir spool cache used by :func:`open_clip` (keeps 2)."""
    key = tmp_dir.resolve()
    if key not in _SPOOLERS:
        _SPOOLERS[key] = Spooler(key, keep=2)
    return _SPOOLERS[key]


@atexit.register
def clear_spools() -> None:
    """Delete this process's cached spools (runs at exit; tests call it too)."""
    for spooler in _SPOOLERS.values():
        spooler.clear()


# ---------------------------------------------------------------------------------------
# The public entry point used by preprocessing

@contextlib.contextmanager
def open_clip(source: str | os.PathLike, passwords=None, tmp_dir: str | os.PathLike | None = None):
    """Context manager yielding a :class:`pathlib.Path` of a real ``.mp4`` to decode.

    Args:
        source: a plain path, or a locator into archives (module docstring).
        passwords: :class:`Passwords`, a spec string, a dict, or ``None`` (read
            ``$FI_PASSWORDS``).
        tmp_dir: the toolkit's folder for temporary files (default
            :data:`DEFAULT_TMP_DIR`); created if missing.

    For a plain file the path itself is yielded. For an archive member the member is
    streamed into a temporary file ``tmp_dir/clip-*.mp4`` (a name of ours, never the
    member's), yielded, and deleted on exit. Picklable through
    ``functools.partial(open_clip, passwords=..., tmp_dir=...)`` for worker processes.

    Raises:
        FileNotFoundError: the file, archive or member does not exist.
        UnsafeMemberError: a member name in the locator is unsafe.
        MemberTooLargeError: the clip (or an inner archive to spool) declares more than
            :data:`MAX_CLIP_BYTES` (:data:`MAX_INNER_ARCHIVE_BYTES`) or an absurd
            compression ratio (refused before any copy), or gives more bytes than declared.
        InsufficientSpaceError: ``tmp_dir``'s disk lacks the space for the copy (an
            ``OSError`` with ``ENOSPC``; nothing is written).
        PasswordError, UnsupportedArchiveError, ArchiveError: the archive cannot be read
            (an ``ArchiveError`` also for a member failing its CRC check).
    """
    path, members = split_locator(source)
    if not members:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: clip file not found")
        yield path
        return
    for member in members:
        check_member_name(member, str(path))
    passwords = resolve_passwords(passwords)
    tmp = Path(tmp_dir) if tmp_dir is not None else DEFAULT_TMP_DIR
    tmp.mkdir(parents=True, exist_ok=True)
    spooler = _process_spooler(tmp)
    with contextlib.ExitStack() as stack:
        archive = stack.enter_context(open_archive(path))
        for member in members[:-1]:
            archive = stack.enter_context(archive.open_nested(member, passwords, spooler))
        info = archive.info(members[-1])
        check_member_size(info, archive.locator, MAX_CLIP_BYTES, "a clip")  # before any byte is written
        check_free_space(tmp, info.file_size, f"the clip {source}")
        fd, name = tempfile.mkstemp(prefix=f"clip-{os.getpid()}-", suffix=".mp4", dir=tmp)
        clip = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, archive.open_member(info, passwords) as src:
                _copy_member(src, out, info.file_size, "a clip", archive.locator, info.filename)
        except BaseException as exc:
            clip.unlink(missing_ok=True)
            if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError)):
                raise ArchiveError(f"{source}: member is corrupt ({exc})") from exc
            raise
    try:
        yield clip
    finally:
        clip.unlink(missing_ok=True)
