"""discover(): every layout of the release, mismatch reports, passwords checked first; the report."""
import os
import pickle
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from fi_data.annotations import UnsafePickleError, annotation_pickle_bytes, labels_to_annotation_dict, youtube_id
from fi_data.archives import PasswordError, Spooler, open_clip
from fi_data.dataset_report import plot_trait_distributions, print_split_sizes, split_sizes
from fi_data.discovery import CLIP_COLUMNS, discover, find_videos
from fi_data.traits import INTERVIEW, SPLITS, TRAITS
from test_archives import clip_bytes, member_bytes, write_zip

ANNOTATION_ZIPS = {"train": ("train-annotation.zip", "annotation_training.pkl"),
                   "validation": ("val-annotation-e.zip", "annotation_validation.pkl"),
                   "test": ("test-annotation-e.zip", "annotation_test.pkl")}


def make_labels(seed=0):
    """12 clips: 6 train, 3 validation, 3 test; ids with leading '-' and '_'."""
    ids = {"train": ["-aaaaaaaaaa.000", "-aaaaaaaaaa.001", "_bbbbbbbbbb.000", "ccccccccccc.003", "ddddddddddd.000",
                     "eeeeeeeeeee.005"],
           "validation": ["-aaaaaaaaaa.002", "fffffffffff.000", "ggggggggggg.001"],
           "test": ["_bbbbbbbbbb.004", "hhhhhhhhhhh.000", "iiiiiiiiiii.002"]}
    rng = np.random.default_rng(seed)
    tables = []
    for split, clip_ids in ids.items():
        t = pd.DataFrame({"clip_id": clip_ids, "split": split})
        for key in (*TRAITS, INTERVIEW):
            t[key] = rng.uniform(0, 1, len(clip_ids))
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


def pickle_bytes(labels, split):
    return annotation_pickle_bytes(labels_to_annotation_dict(labels[labels["split"] == split]))


def write_release(root, labels, *, test_password=None, inner_method=zipfile.ZIP_STORED, skip=(), extra=()):
    """The release layout with fake clips; ``skip``: clip ids left out; ``extra``: unlabelled clip ids
    added to the test archive; ``test_password`` encrypts test-1e.zip and test-annotation-e.zip."""
    root.mkdir(parents=True, exist_ok=True)
    prefix = {"train": ("train-1.zip", "", "training80_01.zip"), "validation": ("val-1.zip", "", "validation80_01.zip"),
              "test": ("test-1e.zip", "test-1/", "test80_01.zip")}
    for split, (outer, folder, inner) in prefix.items():
        ids = [c for c in labels.loc[labels["split"] == split, "clip_id"] if c not in skip]
        ids += list(extra) if split == "test" else []
        inner_zip = member_bytes(inner, [(f"{c}.mp4", clip_bytes(c)) for c in ids], method=zipfile.ZIP_DEFLATED)
        pw = test_password if split == "test" else None
        write_zip(root / outer, [(folder + inner, inner_zip)], password=pw, method=inner_method)
        archive, pkl = ANNOTATION_ZIPS[split]
        write_zip(root / archive, [(pkl, pickle_bytes(labels, split))], password=pw)
    return root


def extract_release(root, labels):
    """The same clips and labels as plain files in folders."""
    for split in SPLITS:
        folder = root / split
        folder.mkdir(parents=True)
        for c in labels.loc[labels["split"] == split, "clip_id"]:
            (folder / f"{c}.mp4").write_bytes(clip_bytes(c))
        (root / ANNOTATION_ZIPS[split][1]).write_bytes(pickle_bytes(labels, split))
    return root


def assert_labels_match(clips, labels):
    got = clips.set_index("clip_id").sort_index()
    want = labels.set_index("clip_id").loc[got.index]
    assert got[list(TRAITS) + [INTERVIEW]].to_numpy().tolist() == want[list(TRAITS) + [INTERVIEW]].to_numpy().tolist()
    assert (got["split"] == want["split"]).all()


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path / "toolkit-tmp"


def test_nested_archives(tmp_path, tmp_dir):
    labels = make_labels()
    root = write_release(tmp_path / "release", labels)
    result = discover(root, tmp_dir=tmp_dir)
    clips = result.clips
    assert tuple(clips.columns) == CLIP_COLUMNS
    assert clips["split"].tolist() == ["train"] * 6 + ["validation"] * 3 + ["test"] * 3
    assert (clips["status"] == "ok").all()
    assert_labels_match(clips, labels)
    assert result.labels_without_video == [] and result.videos_without_labels == [] and result.problems == []
    test_source = clips.loc[clips["clip_id"] == "_bbbbbbbbbb.004", "source"].item()
    assert test_source == f"{root}/test-1e.zip::test-1/test80_01.zip::_bbbbbbbbbb.004.mp4"
    for source, clip_id in zip(clips["source"], clips["clip_id"]):
        with open_clip(source, tmp_dir=tmp_dir) as path:
            assert path.read_bytes() == clip_bytes(clip_id)
    assert "clips with video and labels: 12 (train 6, validation 3, test 3)" in result.summary()


def test_extracted_folders_and_mixed_layout_with_duplicates(tmp_path, tmp_dir):
    labels = make_labels()
    root = extract_release(tmp_path / "extracted", labels)
    plain = discover(root, tmp_dir=tmp_dir)
    assert plain.clips["source"].map(os.path.isfile).all()
    assert_labels_match(plain.clips, labels)
    assert plain.clips["source"].str.startswith(str(root)).all()  # absolute: safe for names starting with '-'

    write_release(root / "archives", labels)  # same clips and labels again, in archives
    mixed = discover(root, tmp_dir=tmp_dir)
    assert len(mixed.clips) == 12 and mixed.clips["source"].map(os.path.isfile).all()  # plain files win
    assert len(mixed.duplicates) == 12
    assert sum("second copy of" in p.reason for p in mixed.problems) == 3  # annotation files, identical
    assert "duplicate copies ignored: 12" in mixed.summary()


def test_mismatches_unsafe_members_and_broken_archives_are_reported(tmp_path, tmp_dir):
    labels = make_labels()
    root = write_release(tmp_path / "r", labels, skip={"ccccccccccc.003", "hhhhhhhhhhh.000"},
                         extra=("zzzzzzzzzzz.000",))
    write_zip(root / "evil.zip", [("../escape.mp4", b"x"), ("/abs.mp4", b"y"), ("short.mp4", b"z")])
    (root / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    result = discover(root, tmp_dir=tmp_dir)
    assert result.labels_without_video == ["ccccccccccc.003", "hhhhhhhhhhh.000"]
    assert result.videos_without_labels == ["zzzzzzzzzzz.000"]
    assert len(result.clips) == 10
    reasons = {p.where: p.reason for p in result.problems}
    assert reasons[f"{root}/evil.zip::../escape.mp4"] == "refused: its name has a '..' component"
    assert reasons[f"{root}/evil.zip::/abs.mp4"] == "refused: its name has an absolute path"
    assert "not a clip name" in reasons[f"{root}/evil.zip::short.mp4"]
    assert reasons[f"{root}/broken.zip"] == "not a readable zip archive (File is not a zip file); skipped"
    text = result.summary()
    assert "labels without video: 2: ccccccccccc.003, hhhhhhhhhhh.000" in text
    assert "videos without labels: 1: zzzzzzzzzzz.000" in text
    assert "problems: 4" in text
    assert not (tmp_path / "escape.mp4").exists() and not (root.parent / "escape.mp4").exists()


def test_missing_or_wrong_password_fails_before_any_copy(tmp_path, tmp_dir, monkeypatch):
    labels = make_labels()
    # train inner archives are DEFLATED in their outer zip: listing them needs a spooled copy,
    # and train-1.zip sorts before test-1e.zip, so a late check would copy it first
    root = write_release(tmp_path / "r", labels, test_password=b"pw", inner_method=zipfile.ZIP_DEFLATED)
    copies = []
    real_spool = Spooler.spool
    monkeypatch.setattr(Spooler, "spool", lambda self, *a: copies.append(a[-1]) or real_spool(self, *a))
    with pytest.raises(PasswordError, match=r"test-1e\.zip: member 'test-1/test80_01\.zip' is encrypted and no "
                                            r"password was given"):
        discover(root, passwords="", tmp_dir=tmp_dir)
    with pytest.raises(PasswordError, match=r"test-annotation-e\.zip: wrong password"):
        discover(root, passwords="test-1e.zip=pw,test-annotation-e.zip=bad", tmp_dir=tmp_dir)
    assert copies == []
    result = discover(root, passwords="test-1e.zip=pw,test-annotation-e.zip=pw", tmp_dir=tmp_dir)
    assert len(result.clips) == 12 and len(copies) == 3  # the train, validation and (encrypted) test inner zips
    assert os.listdir(tmp_dir) == []  # discovery's copies are deleted after listing


def test_wrong_password_of_inner_archive_inside_encrypted_outer(tmp_path, tmp_dir):
    labels = make_labels()
    root = write_release(tmp_path / "r", labels)
    test_ids = labels.loc[labels["split"] == "test", "clip_id"]
    inner = member_bytes("test80_01.zip", [(f"{c}.mp4", clip_bytes(c)) for c in test_ids], password=b"two")
    write_zip(root / "test-1e.zip", [("test-1/test80_01.zip", inner)], password=b"one")
    with pytest.raises(PasswordError, match=r"test-1e\.zip::test-1/test80_01\.zip: wrong password for "
                                            r"'test80_01\.zip'"):
        discover(root, passwords="test-1e.zip=one,test80_*.zip=bad", tmp_dir=tmp_dir)
    result = discover(root, passwords="test-1e.zip=one,test80_*.zip=two", tmp_dir=tmp_dir)
    assert (result.clips["split"] == "test").sum() == 3


def test_annotation_problems(tmp_path, tmp_dir):
    labels = make_labels()
    root = extract_release(tmp_path / "r", labels)
    (root / "annotation_test.pkl").write_bytes(pickle.dumps({"x": os.getcwd}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"annotation_test\.pkl.*posix\.getcwd"):
        discover(root, tmp_dir=tmp_dir)
    for name in ("annotation_test.pkl", "annotation_training.pkl", "annotation_validation.pkl"):
        (root / name).unlink()
    with pytest.raises(FileNotFoundError, match="no annotation files found"):
        discover(root, tmp_dir=tmp_dir)
    other = make_labels(seed=1)
    (root / "annotation_training.pkl").write_bytes(pickle_bytes(labels, "train"))
    (root / "copy").mkdir()
    (root / "copy" / "annotation_training.pkl").write_bytes(pickle_bytes(other, "train"))
    with pytest.raises(ValueError, match="both train annotations but differ"):
        discover(root, tmp_dir=tmp_dir)
    shutil.rmtree(root / "copy")
    for split in SPLITS:
        shutil.rmtree(root / split)
    with pytest.raises(ValueError, match="no clip has both a video and labels"):
        discover(root, tmp_dir=tmp_dir)
    with pytest.raises(NotADirectoryError):
        discover(root / "annotation_training.pkl")


def test_speaker_disjoint_split_through_discover(tmp_path, tmp_dir):
    labels = make_labels()
    root = write_release(tmp_path / "r", labels)
    official = discover(root, tmp_dir=tmp_dir)
    shared = official.clips.groupby(official.clips["clip_id"].map(youtube_id))["split"].nunique()
    assert (shared > 1).any()  # '-aaaaaaaaaa' and '_bbbbbbbbbb' span splits officially
    result = discover(root, split_mode="speaker_disjoint", seed=3, tmp_dir=tmp_dir)
    groups = result.clips.groupby(result.clips["clip_id"].map(youtube_id))["split"].nunique()
    assert (groups == 1).all() and set(result.clips["split"]) == set(SPLITS)
    assert result.split_mode == "speaker-disjoint" and "speaker-disjoint, seed 3" in result.summary()
    assert discover(root, split_mode="speaker-disjoint", seed=3, tmp_dir=tmp_dir).clips.equals(result.clips)


def test_macos_junk_and_hidden_entries_are_ignored(tmp_path, tmp_dir):
    labels = make_labels()
    root = extract_release(tmp_path / "r", labels)
    (root / "train" / "._-aaaaaaaaaa.000.mp4").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "zzzzzzzzzzz.000.mp4").write_bytes(b"x")
    write_zip(root / "mac.zip", [("__MACOSX/train/yyyyyyyyyyy.000.mp4", b"junk")])
    result = discover(root, tmp_dir=tmp_dir)
    assert result.problems == [] and result.videos_without_labels == [] and len(result.clips) == 12


def test_find_videos_for_prediction(tmp_path, tmp_dir):
    folder = tmp_path / "new clips"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "my interview.mp4").write_bytes(b"one")
    (folder / "annotation_training.pkl").write_bytes(b"not read here")
    inner = member_bytes("batch.zip", [("-x.mp4", b"two"), ("../bad.mp4", b"no")])
    archive = write_zip(tmp_path / "more.zip", [("batch.zip", inner), ("notes.txt", b"")])
    single = tmp_path / "single.MP4"
    single.write_bytes(b"three")
    videos, problems = find_videos([folder, archive, single], tmp_dir=tmp_dir)
    assert videos == [("my interview", str(folder / "sub" / "my interview.mp4")), ("single", str(single)),
                      ("-x", f"{archive}::batch.zip::-x.mp4")]
    assert problems == [(f"{archive}::batch.zip::../bad.mp4", "refused: its name has a '..' component")]
    contents = []
    for _, source in videos:
        with open_clip(source, tmp_dir=tmp_dir) as path:
            contents.append(path.read_bytes())
    assert contents == [b"one", b"three", b"two"]
    assert find_videos(single)[0] == [("single", str(single))]
    # A missing input and a file of another kind are rows with their reason; the others are found.
    gone, notes = tmp_path / "gone.mp4", folder / "annotation_training.pkl"
    videos, problems = find_videos([gone, single, notes], tmp_dir=tmp_dir)
    assert videos == [("single", str(single))]
    assert problems == [(str(gone), "missing_file: no such file or folder"),
                        (str(notes), "not_a_clip: expected an .mp4 clip, a .zip archive or a folder")]
    # A clip reached twice (its folder and the file itself) is listed once.
    clip = folder / "sub" / "my interview.mp4"
    assert find_videos([folder, clip], tmp_dir=tmp_dir)[0] == [("my interview", str(clip))]


def test_zip_bomb_inner_archive_is_one_skipped_problem(tmp_path, tmp_dir):
    labels = make_labels()
    root = write_release(tmp_path / "r", labels)
    inner = member_bytes("training80_09.zip", [("zzzzzzzzzzz.000.mp4", bytes(20 * 2**20))])  # stored zeros
    write_zip(root / "train-9.zip", [("training80_09.zip", inner)], method=zipfile.ZIP_DEFLATED)  # ratio ~1000
    result = discover(root, tmp_dir=tmp_dir)
    assert len(result.clips) == 12 and result.videos_without_labels == []
    [problem] = result.problems
    assert problem.where == f"{root}/train-9.zip::training80_09.zip"
    assert problem.reason.startswith(f"{root}/train-9.zip: refusing member 'training80_09.zip': it declares "
                                     f"{len(inner):,} bytes from ")
    assert problem.reason.endswith("a zip bomb or a damaged header; skipped")
    assert not tmp_dir.exists() or os.listdir(tmp_dir) == []


def test_symlinks_outside_the_root_are_not_followed_and_reported(tmp_path, tmp_dir):
    labels = make_labels()
    root = extract_release(tmp_path / "r", labels)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "zzzzzzzzzzz.000.mp4").write_bytes(b"outside the root")
    (root / "to-outside").symlink_to(outside, target_is_directory=True)
    (root / "to-filesystem-root").symlink_to("/", target_is_directory=True)
    (root / "test" / "up").symlink_to(root, target_is_directory=True)  # inside (a loop): walked once
    (root / "moved").mkdir()
    (root / "train" / "-aaaaaaaaaa.000.mp4").rename(root / "moved" / "-aaaaaaaaaa.000.mp4")
    (root / "train" / "linked").symlink_to(root / "moved", target_is_directory=True)  # inside: followed
    result = discover(root, tmp_dir=tmp_dir)
    assert len(result.clips) == 12 and result.videos_without_labels == [] and result.labels_without_video == []
    moved = result.clips.loc[result.clips["clip_id"] == "-aaaaaaaaaa.000", "source"].item()
    assert moved == str(root / "moved" / "-aaaaaaaaaa.000.mp4")  # found (sorted walk reaches moved/ first)
    reasons = {p.where: p.reason for p in result.problems}
    assert reasons == {
        str(root / "to-filesystem-root"): f"symbolic link to /, outside the dataset root {root}; not followed",
        str(root / "to-outside"): f"symbolic link to {outside}, outside the dataset root {root}; not followed"}
    text = result.summary()
    assert "problems: 2" in text and f"{root}/to-outside: symbolic link to {outside}" in text
    videos, problems = find_videos(root / "train")
    assert [name for name, _ in videos] == sorted(["-aaaaaaaaaa.001", "_bbbbbbbbbb.000", "ccccccccccc.003",
                                                   "ddddddddddd.000", "eeeeeeeeeee.005"])
    assert problems == [(str(root / "train" / "linked"),
                         f"symbolic link to {root / 'moved'}, outside the dataset root {root / 'train'}; "
                         "not followed")]


def test_broken_links_of_every_kind_are_skipped_with_a_reason(tmp_path, tmp_dir):
    labels = make_labels()
    root = write_release(tmp_path / "r", labels)
    (root / "gone.zip").symlink_to(tmp_path / "missing.zip")
    (root / "zzzzzzzzzzz.000.mp4").symlink_to(tmp_path / "missing.mp4")
    (root / "loop").mkdir()
    (root / "loop" / "annotation_test.pkl").symlink_to("annotation_test.pkl")  # points at itself
    result = discover(root, tmp_dir=tmp_dir)
    assert len(result.clips) == 12 and result.videos_without_labels == []
    reasons = {p.where: p.reason for p in result.problems}
    assert reasons == {
        str(root / "gone.zip"): f"broken symbolic link (to {str(tmp_path / 'missing.zip')!r}: no such file, or a "
                                "loop); skipped",
        str(root / "zzzzzzzzzzz.000.mp4"): f"broken symbolic link (to {str(tmp_path / 'missing.mp4')!r}: no such "
                                           "file, or a loop); skipped",
        str(root / "loop" / "annotation_test.pkl"): "broken symbolic link (to 'annotation_test.pkl': no such file, "
                                                    "or a loop); skipped"}
    assert "problems: 3" in result.summary()


# --- dataset report ---------------------------------------------------------------------------

def test_split_sizes_and_printout(capsys):
    labels = make_labels()
    table = split_sizes(labels)
    assert table["clips"].tolist() == [6, 3, 3, 12]
    assert table["speakers"].tolist() == [5, 3, 3, 9]
    assert table.loc["validation", "share"] == 0.25
    train = labels[labels["split"] == "train"]
    assert table.loc["train", f"mean_{TRAITS[0]}"] == pytest.approx(train[TRAITS[0]].mean())
    text = print_split_sizes(labels)
    assert capsys.readouterr().out.strip() == text.strip()
    assert text.splitlines()[1].split() == ["train", "6", "5", "50.0%"]


def test_plot_trait_distributions(tmp_path):
    out = plot_trait_distributions(make_labels(), tmp_path / "plots" / "traits.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
