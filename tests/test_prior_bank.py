import json
import os
import pickle

import numpy as np
import pytest

from joindet.priors.bank import PriorBank, PriorVersion


def make_priors(seed, ids, counts):
    """Per-image random priors; counts may contain 0."""
    rng = np.random.default_rng(seed)
    boxes, scores = [], []
    for k in counts:
        xy = rng.uniform(0, 50, (k, 2))
        wh = rng.uniform(1, 30, (k, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
        scores.append(rng.uniform(0, 1, k).astype(np.float32))
    return list(ids), boxes, scores


def test_round_trip(tmp_path):
    bank = PriorBank(tmp_path / "bank")
    assert bank.versions() == [] and bank.latest_version() is None
    ids, boxes, scores = make_priors(0, [42, 7, 100, 3, 55], [3, 0, 5, 1, 0])
    written = bank.write_version(0, ids, boxes, scores, info={"source": "ncut", "tau": 0.2})
    assert written.version == 0

    pv = bank.read(0)
    assert len(pv) == 5
    np.testing.assert_array_equal(pv.image_ids, [3, 7, 42, 55, 100])
    assert pv.image_ids.dtype == np.int64 and pv.offsets.dtype == np.int64
    assert pv.num_boxes == 9
    np.testing.assert_array_equal(pv.boxes_per_image(), [1, 0, 3, 0, 5])
    for i, image_id in enumerate(ids):
        b, s = pv.get(image_id)
        assert b.dtype == np.float32 and s.dtype == np.float32
        assert b.shape == (len(boxes[i]), 4) and s.shape == (len(boxes[i]),)
        assert b.tobytes() == boxes[i].tobytes()  # bit-identical
        assert s.tobytes() == scores[i].tobytes()
    all_scores = np.concatenate(scores).astype(np.float64)
    assert pv.mean_score() == pytest.approx(all_scores.mean(), rel=1e-12)

    meta = json.loads((tmp_path / "bank" / "v0000" / "meta.json").read_text())
    assert meta["version"] == 0 and meta["num_images"] == 5 and meta["num_boxes"] == 9
    assert meta["info"] == {"source": "ncut", "tau": 0.2} and "created" in meta
    assert pv.meta["info"]["source"] == "ncut"
    assert sorted(os.listdir(tmp_path / "bank" / "v0000")) == [
        "boxes.npy",
        "image_ids.npy",
        "meta.json",
        "offsets.npy",
        "scores.npy",
    ]


def test_mmap_and_in_memory(tmp_path):
    bank = PriorBank(tmp_path)
    ids, boxes, scores = make_priors(1, [1, 2, 3], [2, 0, 4])
    bank.write_version(1, ids, boxes, scores)
    pv = bank.read(1)
    for arr in (pv.boxes, pv.scores, pv.offsets, pv.image_ids):
        assert isinstance(arr, np.memmap)
    assert not pv.boxes.flags.writeable
    # get returns writable copies, not views of the map
    b, _ = pv.get(3)
    assert not isinstance(b, np.memmap) and b.flags.writeable
    pm = bank.read(1, mmap=False)
    assert not isinstance(pm.boxes, np.memmap)
    np.testing.assert_array_equal(pm.boxes, pv.boxes)


def test_write_arrays_unsorted_ids(tmp_path):
    bank = PriorBank(tmp_path)
    boxes = np.arange(24, dtype=np.float32).reshape(6, 4)
    boxes[:, 2:] += 10
    scores = np.float32([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ids = np.array([30, 10, 20])
    offsets = np.array([0, 2, 2, 6])  # id 30: rows 0-1, id 10: none, id 20: rows 2-5
    pv = bank.write_version_arrays(5, ids, boxes, scores, offsets)
    np.testing.assert_array_equal(pv.image_ids, [10, 20, 30])
    np.testing.assert_array_equal(pv.offsets, [0, 0, 4, 6])
    np.testing.assert_array_equal(pv.get(30)[0], boxes[0:2])
    np.testing.assert_array_equal(pv.get(20)[1], scores[2:6])
    assert pv.get(10)[0].shape == (0, 4)


def test_versions_listing(tmp_path):
    bank = PriorBank(tmp_path)
    for v in (2, 0, 11):
        bank.write_version(v, *make_priors(v, [1, 2], [1, 2]))
    # not versions: a directory without meta.json, a stale temp dir, a file, an odd name
    (tmp_path / "v0003").mkdir()
    (tmp_path / ".tmp-v0004-123-abc").mkdir()
    (tmp_path / "v0005").write_text("x")
    (tmp_path / "v00006").mkdir()
    (tmp_path / "v00006" / "meta.json").write_text("{}")
    assert bank.versions() == [0, 2, 11]
    assert bank.latest_version() == 11


def test_missing_version_error(tmp_path):
    bank = PriorBank(tmp_path)
    bank.write_version(0, *make_priors(0, [1], [1]))
    bank.write_version(1, *make_priors(1, [1], [1]))
    with pytest.raises(FileNotFoundError) as e:
        bank.read(7)
    msg = str(e.value)
    assert "7" in msg and str(tmp_path) in msg and "[0, 1]" in msg


def test_interrupted_write_keeps_previous_version(tmp_path, monkeypatch):
    bank = PriorBank(tmp_path)
    ids, boxes, scores = make_priors(0, [1, 2, 3], [2, 1, 0])
    bank.write_version(0, ids, boxes, scores)

    real_save = np.save
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        bank.write_version(1, *make_priors(1, [1, 2, 3], [3, 3, 3]))
    monkeypatch.setattr(np, "save", real_save)

    assert len(calls) == 2  # failed after the first file was written
    assert bank.versions() == [0]
    assert not (tmp_path / "v0001").exists()
    assert sorted(os.listdir(tmp_path)) == ["v0000"]  # temp directory cleaned up
    pv = bank.read(0)
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(pv.get(image_id)[0], boxes[i])

    # an input iterator that fails mid-way: nothing written either
    def bad_boxes():
        yield np.zeros((1, 4), np.float32)
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError, match="generator failed"):
        bank.write_version(1, [1, 2], bad_boxes(), [np.zeros(1), np.zeros(1)])
    assert bank.versions() == [0] and sorted(os.listdir(tmp_path)) == ["v0000"]
    # and the version can be written afterwards
    bank.write_version(1, *make_priors(1, [1, 2, 3], [3, 3, 3]))
    assert bank.versions() == [0, 1]


def test_overwrite(tmp_path):
    bank = PriorBank(tmp_path)
    ids, boxes, scores = make_priors(0, [1, 2], [2, 2])
    bank.write_version(0, ids, boxes, scores)
    _, boxes2, scores2 = make_priors(1, [1, 2], [1, 3])
    with pytest.raises(ValueError, match="already exists"):
        bank.write_version(0, ids, boxes2, scores2)
    np.testing.assert_array_equal(bank.read(0).get(1)[0], boxes[0])  # untouched

    pv = bank.write_version(0, ids, boxes2, scores2, info={"round": 2}, overwrite=True)
    np.testing.assert_array_equal(pv.get(1)[0], boxes2[0])
    np.testing.assert_array_equal(pv.get(2)[1], scores2[1])
    assert pv.meta["info"] == {"round": 2}
    assert bank.versions() == [0]
    assert sorted(os.listdir(tmp_path)) == ["v0000"]  # the old copy is gone


def test_unknown_image_id(tmp_path):
    bank = PriorBank(tmp_path)
    pv = bank.write_version(0, *make_priors(0, [10, 20, 30], [1, 1, 1]))
    for bad in (5, 15, 35):
        with pytest.raises(KeyError, match=f"image id {bad}"):
            pv.get(bad)
    assert 20 in pv and 15 not in pv


def test_pickle_round_trip(tmp_path):
    bank = PriorBank(tmp_path)
    ids, boxes, scores = make_priors(3, [4, 8, 15, 16, 23, 42], [1, 0, 2, 3, 0, 5])
    bank.write_version(2, ids, boxes, scores)
    pv = bank.read(2)
    _ = pv.boxes  # open the maps: they must not be pickled
    data = pickle.dumps(pv)
    assert len(data) < 1000
    clone = pickle.loads(data)
    assert isinstance(clone, PriorVersion) and clone.version == 2 and clone._arrays is None
    for i, image_id in enumerate(ids):
        b, s = clone.get(image_id)
        assert b.tobytes() == boxes[i].tobytes() and s.tobytes() == scores[i].tobytes()
    assert isinstance(clone.boxes, np.memmap)
    assert pickle.loads(pickle.dumps(bank)).versions() == [2]


def test_empty_version(tmp_path):
    bank = PriorBank(tmp_path)
    pv = bank.write_version(0, [], [], [])
    assert len(pv) == 0 and pv.num_boxes == 0 and pv.mean_score() == 0.0
    with pytest.raises(KeyError):
        pv.get(1)


def test_bad_inputs(tmp_path):
    bank = PriorBank(tmp_path)
    ids, boxes, scores = make_priors(0, [1, 2], [2, 1])
    with pytest.raises(ValueError, match="same length"):
        bank.write_version(0, [1, 2, 3], boxes, scores)
    with pytest.raises(ValueError, match=r"\(k, 4\)"):
        bank.write_version(0, ids, [boxes[0][:, :3], boxes[1]], scores)
    with pytest.raises(ValueError, match="scores of image"):
        bank.write_version(0, ids, boxes, [scores[0][:1], scores[1]])
    with pytest.raises(ValueError, match="duplicate image ids"):
        bank.write_version(0, [1, 1], boxes, scores)
    with pytest.raises(ValueError, match=">= 0"):
        bank.write_version(-1, ids, boxes, scores)
    with pytest.raises(ValueError, match="offsets"):
        bank.write_version_arrays(0, [1, 2], np.zeros((3, 4)), np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="non-decreasing"):
        bank.write_version_arrays(0, [1, 2], np.zeros((3, 4)), np.zeros(3), [0, 4, 3])
    with pytest.raises(ValueError, match="JSON"):
        bank.write_version(0, ids, boxes, scores, info={"bad": object()})
    assert bank.versions() == [] and os.listdir(tmp_path) == []


def _read_in_worker(pv, image_id):
    b, s = pv.get(image_id)
    return b.tolist(), s.tolist(), type(pv.boxes).__name__


def test_usable_from_spawned_worker(tmp_path):
    import multiprocessing as mp

    bank = PriorBank(tmp_path)
    ids, boxes, scores = make_priors(5, [3, 9], [2, 4])
    pv = bank.write_version(0, ids, boxes, scores)
    with mp.get_context("spawn").Pool(1) as pool:
        b, s, kind = pool.apply(_read_in_worker, (pv, 9))
    np.testing.assert_array_equal(np.float32(b), boxes[1])
    np.testing.assert_array_equal(np.float32(s), scores[1])
    assert kind == "memmap"
