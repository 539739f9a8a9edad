"""Face box and face crops: a real face (skimage's astronaut) pasted on clutter, noise, geometry, validation."""
import json

import cv2
import numpy as np
import pytest
import skimage.data

from fi_data import faces
from fi_data.faces import (FACE_MARGIN, FACE_SIZE, FALLBACK_SIDE, FALLBACK_TOP, FaceBox, crop_faces, detect_faces,
                           face_box, fallback_box)
from fi_data.video import CropBox

H, W = 720, 1280

ASTRONAUT = skimage.data.astronaut()  # 512x512 RGB; the cascade's box on her face: top 74, left 178, side 83
HEAD = ASTRONAUT[5:305, 95:345]  # head and shoulders, 300x250
HEAD_FACE = (69, 83, 83)  # (top, left, side) of the face in HEAD (the cascade's box at full size)


def clutter(rng, h=H, w=W):
    """Smooth colour noise with 30 random solid rectangles: an uint8 RGB ``(h, w, 3)`` background."""
    bg = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(30):
        y, x = (int(v) for v in rng.integers(0, (h, w)))
        dy, dx = (int(v) for v in rng.integers(20, 300, 2))
        cv2.rectangle(bg, (x, y), (x + dx, y + dy), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return bg


def gradient(rng, h=H, w=W):
    """Smooth random sinusoidal colour gradients, uint8 RGB ``(h, w, 3)``."""
    yy, xx = np.mgrid[0:h, 0:w] / h
    out = np.empty((h, w, 3))
    for ch in range(3):
        a, b, c, d = rng.uniform(-1, 1, 4)
        out[..., ch] = 128 + 100 * np.sin(3 * a * xx + 3 * b * yy + 6 * c) * np.cos(2 * d * xx)
    return np.clip(out, 0, 255).astype(np.uint8)


def paste_face(bg, face_side, top, left, gain=1.0):
    """``bg`` with HEAD scaled so its face is ``face_side`` pixels, the face's corner at ``(top, left)``.

    The head may be cut by the frame's edges (never the face itself). Returns the frame and the
    face's ``(top, left, side)`` in it.
    """
    s = face_side / HEAD_FACE[2]
    head = cv2.resize(HEAD, (round(HEAD.shape[1] * s), round(HEAD.shape[0] * s)),
                      interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    oy, ox = top - round(HEAD_FACE[0] * s), left - round(HEAD_FACE[1] * s)
    h, w = bg.shape[:2]
    y0, x0, y1, x1 = max(oy, 0), max(ox, 0), min(oy + head.shape[0], h), min(ox + head.shape[1], w)
    out = bg.copy()
    out[y0:y1, x0:x1] = head[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    if gain != 1.0:
        out = np.clip(out * gain, 0, 255).astype(np.uint8)
    return out, (top, left, round(face_side))


def place(rng, side, h=H, w=W):
    """A random ``(top, left)`` for a face of ``side`` pixels with the whole widened head square
    (:data:`FACE_MARGIN` of the side around it) inside the frame: talking-head framing."""
    m = round(FACE_MARGIN * side)
    return int(rng.integers(m, h - side - m + 1)), int(rng.integers(m, w - side - m + 1))


def centre_in(face, region):
    """Whether the centre of ``face`` ``(top, left, height, width)`` lies in ``region`` ``(top, left, side)``."""
    cy, cx = face[0] + face[2] / 2, face[1] + face[3] / 2
    return region[0] <= cy <= region[0] + region[2] and region[1] <= cx <= region[1] + region[2]


def largest(found):
    return max(found, key=lambda f: f[2] * f[3])


def test_detector_finds_the_astronaut_at_full_size():
    found = detect_faces(ASTRONAUT)
    assert found
    top, left, height, width = largest(found)  # at 320x320 the window sizes step by 15%: (62, 174, 104, 104)
    assert abs(top + height / 2 - 115.5) <= 8 and abs(left + width / 2 - 219.5) <= 8
    assert 0.8 <= height / 83 <= 1.35 and height == width


def test_face_found_on_talking_head_composites():
    rng = np.random.default_rng(20240601)
    sides = np.linspace(0.12, 0.45, 40) * H  # face side 86..324 pixels of 720
    gains = [1.0] * 34 + [0.6, 1.4, 0.5, 1.3, 0.7, 1.5]  # a few darker / brighter frames
    hits = []
    for side, gain in zip(sides, gains):
        frame, region = paste_face(clutter(rng), side, *place(rng, side), gain)
        found = detect_faces(frame)
        hits.append(bool(found) and centre_in(largest(found), region))
    assert np.mean(hits) >= 0.95, f"found {sum(hits)} of {len(hits)}; missed at face sides " \
                                  f"{[round(s / H, 3) for s, h in zip(sides, hits) if not h]}"


def test_no_face_on_noise_and_gradients():
    rng = np.random.default_rng(7)
    frames = ([rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(10)]
              + [gradient(rng) for _ in range(10)] + [clutter(rng) for _ in range(4)])
    assert [detect_faces(f) for f in frames] == [[]] * len(frames)
    face = face_box(np.stack(frames[:3]))
    assert face.fallback and face.found == 0 and face.searched == 3
    side = round(FALLBACK_SIDE * H)
    assert (face.top, face.left, face.size) == (round(FALLBACK_TOP * H), (W - side) // 2, side) == (72, 424, 432)


def test_fallback_fits_the_picture_box():
    box = CropBox(90, 630, 0, W)  # 16:9 letterboxed in 4:3 at 1280 wide: a 540-high picture
    face = fallback_box(box, searched=3)
    assert (face.top, face.left, face.size, face.found, face.searched) == (90 + 54, (W - 324) // 2, 324, 0, 3)
    portrait = fallback_box(CropBox(0, 1280, 0, 720))
    assert (portrait.top, portrait.left, portrait.size) == (128, 144, 432)


def face_frames(rng, side=200, top=150, left=520, noise_at=None):
    """Three clutter frames with the same pasted face (different backgrounds); frame ``noise_at`` is pure noise."""
    frames = []
    for i in range(3):
        if i == noise_at:
            frames.append(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        else:
            frames.append(paste_face(clutter(rng), side, top, left)[0])
    return np.stack(frames), (top, left, side)


def test_face_box_ignores_a_face_free_frame_and_widens_the_box():
    rng = np.random.default_rng(3)
    frames, region = face_frames(rng, noise_at=1)
    face = face_box(frames)
    assert (face.found, face.searched, face.fallback) == (2, 3, False)
    centre = (face.top + face.size / 2, face.left + face.size / 2)
    assert centre_in((centre[0], centre[1], 0, 0), region)
    sides = [largest(detect_faces(frames[i]))[2] for i in (0, 2)]
    assert abs(face.size - np.median(sides) * (1 + 2 * FACE_MARGIN)) <= 1
    assert face.size > region[2]  # widened past the pasted face


def fake_detector(faces_by_frame, calls):
    """A stand-in for ``detect_faces`` on frames numbered by their first pixel: frame ``i`` has the
    faces ``faces_by_frame[i]``; a ``near`` search returns those that lie in its square with a side
    in its range (as the cascade would find them there). Each call is recorded as ``(i, near?)``."""
    def detect(frame, box=None, *, near=None):
        i = int(frame[0, 0, 0])
        calls.append((i, near is not None))
        found = faces_by_frame.get(i, [])
        if near is not None:
            cy, cx, side = near
            reach = faces.NEAR_REACH * side
            found = [(t, l, h, w) for t, l, h, w in found
                     if cy - reach <= t and t + h <= cy + reach and cx - reach <= l and l + w <= cx + reach
                     and side / faces.AGREE_SIZE <= (h + w) / 2 <= side * faces.AGREE_SIZE]
        return found
    return detect


NUMBERED = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, H, W, 3), np.uint8)
"""Six frames whose first pixel is their number; face_box searches frames 1, 3 and 5."""


def test_face_box_median_outvotes_one_false_detection(monkeypatch):
    calls = []
    monkeypatch.setattr(faces, "detect_faces", fake_detector({
        1: [(100, 200, 80, 80), (300, 300, 30, 30)],  # the speaker (largest) and a small face behind
        3: [(500, 1000, 200, 200)],  # one false detection, larger than the speaker, elsewhere
        5: [(104, 204, 80, 80)]}, calls))
    face = face_box(NUMBERED)
    # medians: centre y of 140, 600, 144 -> 144; centre x of 240, 1100, 244 -> 244; side 80 -> 120
    assert face == FaceBox(top=84, left=184, size=120, found=3, searched=3)
    # frame 3: nothing near the first face, so the whole frame is searched, then frame 5
    assert calls == [(1, False), (3, True), (3, False), (5, False)]


def test_two_agreeing_frames_end_the_search_and_two_disagreeing_ones_do_not(monkeypatch):
    calls = []
    monkeypatch.setattr(faces, "detect_faces", fake_detector({1: [(100, 200, 80, 80)], 3: [(110, 210, 84, 84)]},
                                                             calls))
    face = face_box(NUMBERED)
    assert calls == [(1, False), (3, True)]  # the second frame searched only near the first face
    assert (face.found, face.searched) == (2, 2)
    # the mean of the two: centre (146, 246), side 82 -> 123 widened, so top 146 - 61.5 rounds to 84
    assert face == FaceBox(top=84, left=184, size=123, found=2, searched=2)
    calls.clear()  # the same place but half the size: not the same face, so the third frame decides
    monkeypatch.setattr(faces, "detect_faces", fake_detector({1: [(100, 200, 80, 80)], 3: [(100, 200, 40, 40)],
                                                              5: [(102, 202, 80, 80)]}, calls))
    assert face_box(NUMBERED).searched == 3 and calls == [(1, False), (3, True), (3, False), (5, False)]


def test_the_near_search_finds_the_face_the_whole_search_finds():
    rng = np.random.default_rng(21)
    for side, top, left in ((120, 150, 300), (260, 60, 900), (90, 500, 40)):
        frame, region = paste_face(clutter(rng), side, top, left)
        whole = detect_faces(frame)
        assert whole, (side, top, left)
        first = faces._centre_side(largest(whole))
        shifted = (first[0] + 0.1 * first[2], first[1] - 0.1 * first[2], first[2] * 1.1)  # another frame's
        for near in (first, shifted):
            found = [faces._centre_side(f) for f in detect_faces(frame, near=near)]
            assert any(faces._agree(near, f) for f in found)
            # each face it finds is the face the whole search finds (the same shrunk picture; the
            # windows grouped are only those of the near sizes, so the box may move by a few pixels)
            assert all(faces._agree(f, first) for f in found)
            if near == first:
                assert all(max(abs(a - b) for a, b in zip(f, first)) <= 0.05 * first[2] for f in found)
        far = (first[0], (first[1] + W / 2) % W, first[2])  # half the frame's width away: no face there
        assert not any(faces._agree(far, faces._centre_side(f)) for f in detect_faces(frame, near=far))
    with pytest.raises(ValueError, match="positive"):
        detect_faces(frame, near=(10, 10, 0))


def test_face_box_lies_inside_the_letterbox_picture():
    rng = np.random.default_rng(11)
    box = CropBox(90, 630, 0, W)
    frames, region = face_frames(rng, side=240, top=100, left=10)  # widened square would leave the picture
    frames[:, :90] = 0
    frames[:, 630:] = 0
    face = face_box(frames, box)
    assert face.found == face.searched >= 2  # the same face in every frame: two agreeing frames suffice
    assert box.top <= face.top and face.top + face.size <= box.bottom
    assert box.left <= face.left and face.left + face.size <= box.right
    searched = range(face.searched)  # the three frames, in order
    assert face.size == round(np.median([largest(detect_faces(frames[i], box))[2] for i in searched])
                              * (1 + 2 * FACE_MARGIN))
    assert face.top == box.top  # moved down out of the bar
    assert centre_in((face.top + face.size / 2, face.left + face.size / 2, 0, 0), region)


def test_faces_are_searched_only_inside_the_box():
    rng = np.random.default_rng(5)
    frame, region = paste_face(clutter(rng), 200, 200, 100)  # a face in the left half
    assert detect_faces(frame, CropBox(0, H, 0, 640))
    assert detect_faces(frame, CropBox(0, H, 640, W)) == []
    for top, left, height, width in detect_faces(frame, CropBox(0, H, 200, W)):
        assert left >= 200 and left + width <= W


def test_a_square_larger_than_the_picture_is_clamped_to_its_short_side(monkeypatch):
    monkeypatch.setattr(faces, "detect_faces", lambda frame, box, near=None: [(0, 0, 700, 700)])
    face = face_box(np.zeros((3, H, W, 3), np.uint8))  # 700 * 1.5 = 1050 > 720
    assert (face.top, face.size) == (0, H) and 0 <= face.left and face.left + face.size <= W


def test_detect_frames_spreads_and_deduplicates(monkeypatch):
    calls = []
    frames = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 64, 64, 3), np.uint8)
    monkeypatch.setattr(faces, "detect_faces", lambda frame, box, near=None: calls.append(int(frame[0, 0, 0])) or [])
    assert face_box(frames).searched == 3 and calls == [1, 3, 5]
    calls.clear()
    assert face_box(frames[:2], detect_frames=3).searched == 2 and calls == [0, 1]  # each frame once


def test_tiny_picture_has_no_face():
    assert detect_faces(np.zeros((20, 30, 3), np.uint8)) == []


def test_crop_faces_matches_a_direct_resize():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    face = FaceBox(top=100, left=300, size=250, found=3, searched=3)
    out = crop_faces(frames, face)
    assert out.shape == (4, FACE_SIZE, FACE_SIZE, 3) and out.dtype == np.uint8
    for i in range(4):
        region = np.ascontiguousarray(frames[i, 100:350, 300:550])
        np.testing.assert_array_equal(out[i], cv2.resize(region, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA))
    bilinear = crop_faces(frames, face, size=64, scale_flags="bilinear")
    np.testing.assert_array_equal(bilinear[0], cv2.resize(np.ascontiguousarray(frames[0, 100:350, 300:550]), (64, 64),
                                                          interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(crop_faces(frames, face, size=250), frames[:, 100:350, 300:550])


def test_face_box_round_trips_through_json():
    face = FaceBox(np.int64(72), 424, 432, 0, 3)
    d = json.loads(json.dumps(face.to_dict()))
    assert d == {"top": 72, "left": 424, "size": 432, "found": 0, "searched": 3}
    assert FaceBox.from_dict(d) == face and face.fallback
    assert not FaceBox(0, 0, 10, 1, 3).fallback


@pytest.mark.parametrize("frame, match", [
    (np.zeros((H, W, 3), np.float32), "uint8 RGB frame"),
    (np.zeros((1, H, W, 3), np.uint8), "uint8 RGB frame"),
    (np.zeros((H, W), np.uint8), "uint8 RGB frame"),
    (np.zeros((H, W, 4), np.uint8), "uint8 RGB frame"),
])
def test_detect_faces_rejects_bad_frames(frame, match):
    with pytest.raises(ValueError, match=match):
        detect_faces(frame)


@pytest.mark.parametrize("box", [CropBox(0, H + 1, 0, W), CropBox(-1, H, 0, W), CropBox(10, 10, 0, W),
                                 CropBox(0, H, 500, 400)])
def test_boxes_outside_the_frame_are_rejected(box):
    with pytest.raises(ValueError, match="not inside"):
        detect_faces(np.zeros((H, W, 3), np.uint8), box)
    with pytest.raises(ValueError, match="not inside"):
        face_box(np.zeros((2, H, W, 3), np.uint8), box)


def test_face_box_and_crop_faces_reject_bad_input():
    frames = np.zeros((2, 100, 120, 3), np.uint8)
    for bad in (frames[0], frames.astype(np.int16), frames[..., :1], np.zeros((0, 100, 120, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8 RGB frames"):
            face_box(bad)
        with pytest.raises(ValueError, match="uint8 RGB frames"):
            crop_faces(bad, FaceBox(0, 0, 50, 1, 1))
    with pytest.raises(ValueError, match="detect_frames"):
        face_box(frames, detect_frames=0)
    with pytest.raises(ValueError, match="size must be"):
        crop_faces(frames, FaceBox(0, 0, 50, 1, 1), size=0)
    with pytest.raises(ValueError, match="scale_flags"):
        crop_faces(frames, FaceBox(0, 0, 50, 1, 1), scale_flags="cubic")
    for bad_face in (FaceBox(60, 0, 50, 1, 1), FaceBox(0, 80, 50, 1, 1), FaceBox(-1, 0, 50, 1, 1),
                     FaceBox(0, 0, 0, 1, 1)):
        with pytest.raises(ValueError, match="not inside"):
            crop_faces(frames, bad_face)
