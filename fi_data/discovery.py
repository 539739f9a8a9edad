"""Find every clip and its labels under a folder, whatever mix of the release it holds.

:func:`discover` accepts the release as people have it on disk, in any mix:

* the outer archives (``train-1.zip`` ... ``train-6.zip``, ``val-1.zip``, ``val-2.zip``,
  ``test-1e.zip``, ``test-2e.zip``), the inner ones (``training80_01.zip`` ...,
  ``validation80_XX.zip``, ``test80_XX.zip``, also inside a ``test-1/`` folder), nested up to
  :data:`~fi_data.archives.MAX_ARCHIVE_DEPTH` archives deep and read in place
  (:mod:`fi_data.archives`);
* already-extracted ``.mp4`` files in any folder structure;
* the annotation pickles (``annotation_training.pkl`` ...) or their archives
  (``train-annotation.zip``, ``val-annotation-e.zip``, ``test-annotation-e.zip``).

Archive and file names do not matter, only what they hold: a clip is any member or file
named ``<11-char YouTube id>.<NNN>.mp4``, labels come from members or files named like the
three annotation pickles, and a clip's split is the split of the annotation file that
labels it. Hidden files and folders (``.name``), macOS ``__MACOSX/`` and ``._name`` entries
are ignored.

Symbolic links: a link to a folder is followed only if its target resolves inside the root
(a link to ``/`` would otherwise walk the whole filesystem); one pointing outside is not
followed and is reported as a problem. Links to files are read wherever they point (a
folder of links to downloaded archives is a common layout, and a file link reads one file,
never walks). A broken link (missing target or a loop) named like a clip, an archive or an
annotation file is reported and skipped, whatever its kind.

It runs in two passes. The first opens every archive reachable without copying anything
and checks each encrypted member's password (and refuses AES), so a missing or wrong
password stops the run with one error naming the archive before any long work. The
second lists every archive (streaming inner archives that cannot be read in place into
``tmp_dir``, one at a time) and reads the annotation pickles.

Nothing is silently dropped: clips with labels but no video, videos with no labels,
refused or unreadable members, broken archives and duplicate copies are all kept in the
:class:`DiscoveryResult` and shown by :meth:`DiscoveryResult.summary`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import zipfile
import zlib
from pathlib import Path

import pandas as pd

from fi_data.annotations import (ANNOTATION_FILES, LABEL_COLUMNS, AnnotationFormatError, UnsafePickleError,
                                 clip_id_from_name, read_annotations, split_of_annotation_file)
from fi_data.archives import (DEFAULT_TMP_DIR, MAX_ARCHIVE_DEPTH, Archive, ArchiveError, PasswordError,
                              Spooler, UnsafeMemberError, UnsupportedArchiveError, check_member_name, make_locator,
                              open_archive, resolve_passwords)
from fi_data.errors import UserError
from fi_data.splits import apply_split, normalize_split_mode
from fi_data.traits import INTERVIEW, SPLITS, TRAITS

log = logging.getLogger(__name__)

CLIP_COLUMNS = ("clip_id", "split", *TRAITS, INTERVIEW, "source", "status")
"""Columns of the clip table, in order (see :class:`DiscoveryResult`)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something found under the root that was not used: ``where`` (path or locator) and why."""

    where: str
    reason: str


@dataclasses.dataclass
class DiscoveryResult:
    """What :func:`discover` found.

    Attributes:
        root: the folder searched (absolute).
        clips: the clip table: one row per clip that has both a video and labels; columns
            :data:`CLIP_COLUMNS`: ``clip_id`` (``<11-char YouTube id>.<NNN>``), ``split``
            (one of ``SPLITS``, set by ``split_mode``), the five ``TRAITS`` and
            ``interview`` (float64 in [0, 1]), ``source`` (an absolute path of an ``.mp4``,
            or a locator ``archive::member[::member]``, see :mod:`fi_data.archives`) and
            ``status`` (``"ok"``; later stages write reasons). Rows are ordered by split,
            then source, so clips of one archive are consecutive.
        labels: every label read, with the official split (columns ``LABEL_COLUMNS``).
        labels_without_video: clip ids labelled but with no video found (sorted).
        videos_without_labels: clip ids of videos that no annotation file labels (sorted).
        duplicates: ``(clip_id, kept source, ignored source)`` for clips found twice.
        problems: entries that were refused or could not be read (members, archives,
            broken links, folder links leading outside ``root``), with the reason.
        split_mode, seed: how ``clips.split`` was made.
    """

    root: Path
    clips: pd.DataFrame
    labels: pd.DataFrame
    labels_without_video: list
    videos_without_labels: list
    duplicates: list
    problems: list
    split_mode: str
    seed: int

    def summary(self, max_names: int = 5) -> str:
        """A short multi-line report: counts per split and every mismatch, with first names."""
        def names(items):
            items = list(items)
            shown = ", ".join(items[:max_names])
            return f": {shown}{', ...' if len(items) > max_names else ''}" if items else ""

        def per_split(frame):
            counts = frame["split"].value_counts()
            return ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SPLITS)

        mode = self.split_mode + (f", seed {self.seed}" if self.split_mode != "official" else "")
        lines = [
            f"Discovery under {self.root} (split: {mode})",
            f"  labels read: {len(self.labels)} ({per_split(self.labels)})",
            f"  clips with video and labels: {len(self.clips)} ({per_split(self.clips)})",
            f"  labels without video: {len(self.labels_without_video)}{names(self.labels_without_video)}",
            f"  videos without labels: {len(self.videos_without_labels)}{names(self.videos_without_labels)}",
            f"  duplicate copies ignored: {len(self.duplicates)}{names(d[0] for d in self.duplicates)}",
            f"  problems: {len(self.problems)}",
        ]
        lines += [f"    {p.where}: {p.reason}" for p in self.problems[:max_names]]
        if len(self.problems) > max_names:
            lines.append(f"    ... and {len(self.problems) - max_names} more")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


class _Collector:
    """Accumulates videos, label tables and problems during the second pass.

    ``release=True`` (discover): videos must have release clip names, one per clip id, and
    annotation files are read. ``release=False`` (find_videos): every ``.mp4`` is kept under
    its file name, and annotation files are ignored.
    """

    def __init__(self, release: bool = True):
        self.release = release
        self.videos: dict[str, str] = {}
        self.any_videos: list[tuple[str, str]] = []
        self.duplicates: list = []
        self.labels: list[tuple[str, pd.DataFrame]] = []
        self.problems: list[Problem] = []

    def problem(self, where, reason):
        where = str(where)
        reason = reason.replace(f"{where}: ", "", 1)  # error messages already start with the name
        log.warning("%s: %s", where, reason)
        self.problems.append(Problem(where, reason))

    def video(self, name: str, source: str):
        if not self.release:
            self.any_videos.append((posixpath.basename(name.replace("\\", "/"))[:-len(".mp4")], source))
            return
        clip_id = clip_id_from_name(name)
        if clip_id is None:
            self.problem(source, "not a clip name of the form '<11-char YouTube id>.<NNN>.mp4'; skipped")
        elif clip_id in self.videos:
            self.duplicates.append((clip_id, self.videos[clip_id], source))
        else:
            self.videos[clip_id] = source


def _ignored(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return "__MACOSX" in parts or parts[-1].startswith(".")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_files(root: Path, problem):
    """Sorted (mp4, zip, annotation pkl) paths under root; skips hidden entries.

    Folder links are followed (once) only when their target resolves inside ``root``;
    others, and broken links named like a file of interest, are passed to
    ``problem(where, reason)`` and skipped (module docstring).
    """
    found = {"mp4": [], "zip": [], "pkl": []}
    seen = set()
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            link = os.path.join(folder, d)
            target = os.path.realpath(link)
            if os.path.islink(link) and not _inside(target, real_root):
                problem(link, f"symbolic link to {target}, outside the dataset root {real_root}; not followed")
            else:
                kept.append(d)
        dirs[:] = kept
        for f in sorted(files):
            if f.startswith("."):
                continue
            lower = f.lower()
            path = Path(folder) / f
            kind = "mp4" if lower.endswith(".mp4") else "zip" if lower.endswith(".zip") else \
                "pkl" if split_of_annotation_file(f) else None
            if kind is None:
                continue
            if not path.exists():  # os.walk lists a broken link (or a link loop) as a file
                problem(path, f"broken symbolic link (to {os.readlink(path)!r}: no such file, or a loop); skipped")
                continue
            found[kind].append(path)
    return found


def _walk_archive(archive: Archive, passwords, spooler: Spooler, out: _Collector | None) -> None:
    """Recurse through one archive. ``out=None``: first pass (password checks only, no copies)."""
    check_only = out is None
    if check_only or not archive.in_place:  # first pass, or a spooled archive the first pass only peeked at
        archive.check_readable(passwords)
    for info in archive.zip.infolist():
        name = info.filename
        if info.is_dir() or _ignored(name):
            continue
        where = make_locator(archive.locator, name)
        try:
            check_member_name(name, archive.locator)
        except UnsafeMemberError as exc:
            if out is not None:
                out.problem(where, f"refused: {exc.reason}")
            continue
        lower = name.lower()
        try:
            if lower.endswith(".zip"):
                if archive.depth >= MAX_ARCHIVE_DEPTH:
                    if out is not None:
                        out.problem(where, f"archive nested deeper than {MAX_ARCHIVE_DEPTH} levels; not read")
                elif check_only and not archive.can_open_in_place(info):
                    archive.peek_nested(name, passwords)
                else:
                    with archive.open_nested(name, passwords, spooler) as nested:
                        _walk_archive(nested, passwords, spooler, out)
            elif check_only:
                continue
            elif lower.endswith(".mp4"):
                out.video(name, where)
            elif out.release and split_of_annotation_file(name):
                with archive.open_member(info, passwords) as f:
                    out.labels.append((where, read_annotations(f, split_of_annotation_file(name), origin=where)))
        except (PasswordError, UnsupportedArchiveError, UnsafePickleError, AnnotationFormatError):
            raise
        except (ArchiveError, zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            if out is not None:
                detail = str(exc) if isinstance(exc, ArchiveError) else f"unreadable ({type(exc).__name__}: {exc})"
                out.problem(where, f"{detail}; skipped")
            else:
                log.debug("first pass: %s unreadable (%s); reported in the second pass", where, exc)


def _spooler(tmp_dir) -> Spooler:
    return Spooler(Path(tmp_dir) if tmp_dir is not None else DEFAULT_TMP_DIR, keep=0)


def _scan(files: dict, passwords, spooler: Spooler, out: _Collector) -> None:
    """Both passes over the files found: passwords of every archive first, then the listing."""
    archives = []
    for path in files["zip"]:
        try:
            archives.append(open_archive(path))
        except (ArchiveError, OSError) as exc:  # not a zip, gone, unreadable: this archive's problem
            out.problem(path, f"{exc}; skipped")
    try:
        for archive in archives:  # first pass: open what can be opened in place, check passwords
            _walk_archive(archive, passwords, spooler, None)
        for path in files["mp4"]:
            out.video(path.name, str(path))
        for path in files["pkl"] if out.release else ():
            out.labels.append((str(path), read_annotations(path)))
        for archive in archives:  # second pass
            _walk_archive(archive, passwords, spooler, out)
    finally:
        for archive in archives:
            archive.close()


def _merge_labels(tables: list[tuple[str, pd.DataFrame]], out: _Collector) -> pd.DataFrame:
    """Concatenate label tables; an identical second copy of a file is ignored (noted as a
    problem); two files that label one clip differently raise AnnotationFormatError."""
    kept: dict[str, tuple[str, pd.DataFrame]] = {}
    for where, table in tables:
        split = table["split"].iloc[0] if len(table) else None
        if split in kept:
            first_where, first = kept[split]
            if first.reset_index(drop=True).equals(table.reset_index(drop=True)):
                out.problem(where, f"second copy of {first_where}; ignored")
                continue
            raise AnnotationFormatError(f"{where} and {first_where} are both {split} annotations but differ; "
                                        "remove the wrong one")
        kept[split] = (where, table)
    if not kept:
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    labels = pd.concat([t for _, t in kept.values()], ignore_index=True)
    dup = labels["clip_id"].duplicated(keep=False)
    if dup.any():
        clash = labels[dup].sort_values("clip_id").head(6)
        raise AnnotationFormatError(
            f"{int(dup.sum())} label rows name a clip that another annotation file labels too "
            f"(files: {[w for w, _ in kept.values()]}); first: {clash[['clip_id', 'split']].values.tolist()}")
    return labels


def discover(root: str | os.PathLike, passwords=None, split_mode: str = "official", seed: int = 0, *,
             tmp_dir: str | os.PathLike | None = None, require_videos: bool = True) -> DiscoveryResult:
    """Find every clip and its labels under ``root`` (see the module docstring).

    Args:
        root: folder holding the release in any mix of archives and extracted files.
        passwords: :class:`~fi_data.archives.Passwords`, a spec string, a dict, or ``None``
            (read ``$FI_PASSWORDS``).
        split_mode: ``"official"`` or ``"speaker-disjoint"`` (:mod:`fi_data.splits`).
        seed: seed of the speaker-disjoint split.
        tmp_dir: the toolkit's folder for temporary copies of inner archives that cannot
            be read in place (default :data:`~fi_data.archives.DEFAULT_TMP_DIR`).
        require_videos: False: labels alone are enough (``clips`` may be empty).

    Returns:
        :class:`DiscoveryResult`; ``print(result.summary())`` shows the mismatch report.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        PasswordError: an encrypted archive has no or a wrong password (first pass).
        UnsupportedArchiveError: an AES-encrypted archive.
        UnsafePickleError, AnnotationFormatError: an annotation file is malicious, invalid,
            or conflicts with another one.
        FileNotFoundError: no annotation file was found under ``root``.
        ValueError: no clip has both a video and labels (with ``require_videos``), or an
            unknown split mode.
    """
    split_mode = normalize_split_mode(split_mode)
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: dataset root must be a folder")
    passwords = resolve_passwords(passwords)
    out = _Collector(release=True)
    _scan(_walk_files(root, out.problem), passwords, _spooler(tmp_dir), out)

    if not out.labels:
        raise FileNotFoundError(f"{root}: no annotation files found; expected {sorted(ANNOTATION_FILES.values())} "
                                "or the archives holding them (train-annotation.zip, val-annotation-e.zip, "
                                "test-annotation-e.zip)")
    labels = _merge_labels(out.labels, out)
    labelled = set(labels["clip_id"])
    clips = labels[labels["clip_id"].isin(out.videos.keys())].copy()
    clips["source"] = clips["clip_id"].map(out.videos)
    clips["status"] = "ok"
    clips = apply_split(clips[list(CLIP_COLUMNS)], split_mode, seed)
    clips["_order"] = clips["split"].map({s: i for i, s in enumerate(SPLITS)})
    clips = clips.sort_values(["_order", "source"]).drop(columns="_order").reset_index(drop=True)
    result = DiscoveryResult(
        root=root, clips=clips, labels=labels.reset_index(drop=True),
        labels_without_video=sorted(labelled - out.videos.keys()),
        videos_without_labels=sorted(out.videos.keys() - labelled),
        duplicates=out.duplicates, problems=out.problems, split_mode=split_mode, seed=seed)
    if clips.empty and require_videos:
        raise UserError(f"no clip has both a video and labels\n{result.summary()}")
    return result


def find_videos(inputs, passwords=None, *, tmp_dir: str | os.PathLike | None = None):
    """Every ``.mp4`` in the given files, folders and archives (for prediction on new clips).

    Folders are searched recursively and archives read in place exactly as in
    :func:`discover` (passwords checked first), but file names may be anything and no labels
    are read.

    Args:
        inputs: a path or a list of paths: ``.mp4`` files, folders, or zip archives.
        passwords, tmp_dir: as :func:`discover`.

    Returns:
        ``(videos, problems)``: ``videos`` is a list of ``(name, source)`` in a stable order,
        ``name`` the file name without ``.mp4`` and ``source`` an absolute path or an
        archive locator for :func:`fi_data.archives.open_clip`; ``problems`` a list of
        ``(where, reason)`` for inputs that do not exist (``missing_file``) or are neither
        ``.mp4`` nor ``.zip`` (``not_a_clip``), refused members, unreadable archives, broken
        links and folder links leading outside an input folder (not followed). A clip reached
        twice (e.g. a folder and a file in it) is listed once.

    Raises:
        PasswordError, UnsupportedArchiveError: as :func:`discover`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = {"mp4": [], "zip": [], "pkl": []}
    out = _Collector(release=False)
    for item in map(lambda p: Path(p).resolve(), inputs):
        suffix = item.suffix.lower()
        if item.is_dir():
            for kind, paths in _walk_files(item, out.problem).items():
                files[kind] += paths
        elif not item.exists():
            out.problem(item, "missing_file: no such file or folder")
        elif suffix in (".mp4", ".zip"):
            files[suffix[1:]].append(item)
        else:
            out.problem(item, "not_a_clip: expected an .mp4 clip, a .zip archive or a folder")
    _scan(files, resolve_passwords(passwords), _spooler(tmp_dir), out)
    unique = list(dict.fromkeys(out.any_videos))  # a clip given twice (a folder and a file in it) once
    return unique, [(p.where, p.reason) for p in out.problems]
