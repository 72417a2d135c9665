"""Refresh generators (joindet.priors.refresh): each reads the model being trained and returns valid
priors for every image; the eigen-map box mean against a brute-force reference; re-scoring keeps the
precedent boxes; a refresh run with each generator publishes a complete version."""

import json

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detectron2.data import DatasetCatalog

from joindet.data.mapper import DetrDatasetMapper
from joindet.engine.pretrain import JoinDetTrainer, bank_dir
from joindet.modeling import JoinDet
from joindet.priors.bank import PriorBank
from joindet.priors.refresh import REFRESH_GENERATOR_REGISTRY, box_mean_of_map, build_refresh_generator
from joindet.priors.rescore import RESCORE_QUALITIES

from conftest import TINY_DATA_OPTS, TINY_MODEL_OPTS, build_cfg
from test_pretraining import DATASET, PRETRAIN_CONFIG, TINY_PRETRAIN_OPTS, _pretrain_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# those with a forward pass of their own
GENERATORS = ["ncut_encoder", "detector", "detector_ncut", "rescore", "rescore_ncut"]
ONLINE_GENERATORS = ["rescore_online"]  # those that read the training steps (tests/test_online_rescore.py)
# the tiny pretraining of test_pretraining as train_net-style overrides, for the tools
TINY_PRETRAIN_OPTS_FOR_TOOL = [*TINY_DATA_OPTS, *TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS]


def test_registry_holds_the_documented_generators():
    assert sorted(n for n, _ in REFRESH_GENERATOR_REGISTRY) == sorted(GENERATORS + ONLINE_GENERATORS)
    # refused at start-up by the config check, and by the builder for a config changed after the check
    with pytest.raises(ValueError, match=r"JOINDET\.REFRESH\.GENERATOR.*no_such.*detector_ncut"):
        build_cfg(["JOINDET.REFRESH.GENERATOR", "no_such"], config_file=PRETRAIN_CONFIG, data_opts=False)
    cfg = _with_refresh(build_cfg(config_file=PRETRAIN_CONFIG, data_opts=False), generator="no_such")
    with pytest.raises(ValueError, match=r"JOINDET\.REFRESH\.GENERATOR.*no_such.*detector_ncut"):
        build_refresh_generator(cfg, mapper=None)


def _with_refresh(cfg, **refresh):
    """A copy of ``cfg`` with ``JOINDET.REFRESH.<KEY>`` set from ``refresh`` (keys in lower case)."""
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in refresh.items():
        cfg.JOINDET.REFRESH[key.upper()] = value
    return cfg


def test_box_mean_of_map_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 8, generator=gen)
    valid = torch.zeros(6, 8, dtype=torch.bool)
    valid[:5, :7] = True  # the image's own grid: 5 x 7 patches of a 50 x 70 image (padded to 6 x 8)
    boxes = torch.tensor([[0.0, 0.0, 70.0, 50.0], [12.0, 3.0, 31.0, 28.0], [44.0, 41.0, 46.0, 43.0],
                          [66.0, 0.0, 70.0, 9.0]])
    got = box_mean_of_map(maps, valid, boxes, (50, 70))
    for box, value in zip(boxes.tolist(), got.tolist()):
        inside = [maps[i, j] for i in range(5) for j in range(7)
                  if box[0] <= (j + 0.5) * 10 <= box[2] and box[1] <= (i + 0.5) * 10 <= box[3]]
        if not inside:  # no patch centre inside: the nearest patch
            j = min(max(int(round((box[0] + box[2]) / 2 / 10 - 0.5)), 0), 6)
            i = min(max(int(round((box[1] + box[3]) / 2 / 10 - 0.5)), 0), 4)
            inside = [maps[i, j]]
        assert value == pytest.approx(float(torch.stack(inside).mean()), rel=1e-5)


@pytest.fixture(scope="module")
def tiny_model_and_data(synthetic_cache, tmp_path_factory):
    cfg = _pretrain_cfg(tmp_path_factory.mktemp("refresh"))
    torch.manual_seed(0)
    model = JoinDet(cfg).eval()
    dicts = DatasetCatalog.get(DATASET)[:4]
    return cfg, model, dicts


class _Precedent:
    """A PriorVersion stand-in: fixed boxes per image id."""

    def __init__(self, priors):
        self.priors = priors

    def get(self, image_id):
        return self.priors[image_id]


@pytest.mark.parametrize("name", GENERATORS)
def test_each_generator_gives_valid_priors_for_every_image(tiny_model_and_data, name):
    cfg, model, dicts = tiny_model_and_data
    generator = build_refresh_generator(_with_refresh(cfg, generator=name), DetrDatasetMapper(cfg, is_train=False))
    rng = np.random.default_rng(0)
    precedent = {}
    for d in dicts:
        xy = rng.uniform(0, d["width"] / 2, (5, 2))
        precedent[d["image_id"]] = (np.concatenate([xy, xy + d["width"] / 3], 1).astype(np.float32),
                                    rng.uniform(0.1, 1, 5).astype(np.float32))
    model.train()
    out = generator(model, dicts, _Precedent(precedent))
    assert model.training  # the generator restored the mode
    assert sorted(out) == sorted(d["image_id"] for d in dicts)
    topk = cfg.JOINDET.PRIORS.TOPK
    for d in dicts:
        boxes, scores = out[d["image_id"]]
        pool = 5 if name == "rescore_ncut" else 0  # the precedent boxes beside at most K regions
        assert boxes.dtype == np.float32 and boxes.shape == (len(scores), 4) and len(scores) <= topk + pool
        assert np.isfinite(boxes).all() and np.isfinite(scores).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes.min(initial=0) >= 0 and (boxes[:, [0, 2]] <= d["width"] + 1e-3).all()
        assert (boxes[:, [1, 3]] <= d["height"] + 1e-3).all()
        if name in ("rescore", "rescore_ncut"):  # the precedent boxes first, re-scored in [0, 1]
            np.testing.assert_array_equal(boxes[:5], precedent[d["image_id"]][0])
            assert ((scores >= 0) & (scores <= 1)).all()
        if name == "rescore":
            assert len(boxes) == 5
        if name in ("detector", "detector_ncut"):
            assert len(scores) >= 1  # 10 queries: what NMS at 0.7 keeps, at most top K
            iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).fill_diagonal_(0)
            assert float(iou.max()) <= cfg.JOINDET.REFRESH.NMS_THRESH + 1e-6
            assert ((scores >= 0) & (scores <= 1)).all() and np.all(np.diff(scores) <= 1e-7)


def test_ncut_encoder_with_a_relative_threshold_cuts_at_each_images_quantile(tiny_model_and_data, monkeypatch):
    """JOINDET.NCUT.TAU_QUANTILE reaches the NCut of every refresh batch: each image's graph keeps about
    1 - q of its pairs as edges, so NCut finds structure in every image of the tiny model."""
    import joindet.priors.generation as generation

    cfg, model, dicts = tiny_model_and_data
    cfg = _with_refresh(cfg, generator="ncut_encoder")
    cfg.JOINDET.NCUT.TAU_QUANTILE = 0.5
    calls = []
    real = generation.priors_from_features

    def recording(*args, **kwargs):
        calls.append(kwargs["tau_quantile"])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "priors_from_features", recording)
    out = build_refresh_generator(cfg, DetrDatasetMapper(cfg, is_train=False))(model, dicts)
    assert calls and set(calls) == {0.5}
    assert sorted(out) == sorted(d["image_id"] for d in dicts)
    assert all(len(out[d["image_id"]][1]) >= 1 for d in dicts)


def _random_boxes(dicts, k, seed):
    """Precedent priors: ``k`` random boxes per image (at least 4 pixels a side), each scored 0.5."""
    rng = np.random.default_rng(seed)
    precedent = {}
    for d in dicts:
        xy = rng.uniform(0, d["width"] / 2, (k, 2))
        precedent[d["image_id"]] = (np.concatenate([xy, xy + rng.uniform(4, d["width"] / 2, (k, 2))], 1).astype(
            np.float32), np.full(k, 0.5, np.float32))
    return precedent


@pytest.mark.parametrize("quality", RESCORE_QUALITIES)
def test_rescore_generator_scores_are_the_quality_of_the_models_predictions(tiny_model_and_data, quality):
    cfg, model, dicts = tiny_model_and_data
    mapper = DetrDatasetMapper(cfg, is_train=False)
    generator = build_refresh_generator(_with_refresh(cfg, generator="rescore", rescore_quality=quality), mapper)
    assert generator.quality == quality
    precedent = _random_boxes(dicts, 6, seed=1)
    out = generator(model, dicts, _Precedent(precedent))
    with torch.no_grad():
        preds = model.eval().objectness_predictions([mapper(d) for d in dicts])
    for d, (boxes, objectness) in zip(dicts, preds):
        got_boxes, got = out[d["image_id"]]
        np.testing.assert_array_equal(got_boxes, precedent[d["image_id"]][0])
        iou = torch.stack([torch.tensor([_iou(p, q) for q in boxes.tolist()], dtype=torch.float64)
                           for p in got_boxes.tolist()])
        if quality == "objectness_x_iou":
            expected = (iou * objectness[None].double()).amax(1)
        else:
            # the objectness of the query overlapping the prior most. Untrained queries predict boxes of one size,
            # whose IoUs with a prior containing them tie up to the rounding of the model's outputs: any query
            # within a few float32 ulps of the best IoU may be the one the generator's float32 IoU picks.
            best = iou.amax(1, keepdim=True)
            near_best = (iou >= best * (1 - 8 * torch.finfo(torch.float32).eps)) & (best > 0)  # (priors, queries)
            candidates = torch.where(near_best, objectness[None].double(), float("nan"))
            closest = (candidates - torch.from_numpy(got).double()[:, None]).abs().nan_to_num(float("inf")).argmin(1)
            expected = torch.where(best[:, 0] > 0, candidates.gather(1, closest[:, None])[:, 0], 0.0)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-6)


def test_rescore_ncut_scores_the_precedent_boxes_and_the_encoders_ncut_regions(tiny_model_and_data):
    cfg, model, dicts = tiny_model_and_data
    mapper = DetrDatasetMapper(cfg, is_train=False)
    precedent = _random_boxes(dicts, 4, seed=2)
    cfg = _with_refresh(cfg, generator="rescore_ncut", rescore_quality="objectness_x_iou")
    out = build_refresh_generator(cfg, mapper)(model, dicts, _Precedent(precedent))
    regions = build_refresh_generator(_with_refresh(cfg, generator="ncut_encoder"), mapper)(model, dicts)
    with torch.no_grad():
        preds = model.eval().objectness_predictions([mapper(d) for d in dicts])
    added = 0
    for d, (boxes, objectness) in zip(dicts, preds):
        got_boxes, got = out[d["image_id"]]
        # the pool: the precedent boxes, then the regions ncut_encoder finds on the same encoder output
        expected_boxes = np.concatenate([precedent[d["image_id"]][0], regions[d["image_id"]][0]])
        np.testing.assert_allclose(got_boxes, expected_boxes, rtol=1e-6, atol=1e-4)
        added += len(regions[d["image_id"]][0])
        # every box scored as rescore scores it: max over queries of objectness x IoU
        iou = torch.tensor([[_iou(p, q) for q in boxes.tolist()] for p in got_boxes.tolist()], dtype=torch.float64)
        np.testing.assert_allclose(got, (iou * objectness[None].double()).amax(1).numpy(), rtol=1e-4, atol=1e-6)
    assert added >= len(dicts)  # NCut found at least one region per image on average: the pool grew
    with pytest.raises(ValueError, match="rescore_ncut refresh generator needs the precedent priors"):
        build_refresh_generator(cfg, mapper)(model, dicts)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detector_ncut_scores_are_the_detector_scores_reweighted(tiny_model_and_data):
    cfg, model, dicts = tiny_model_and_data
    mapper = DetrDatasetMapper(cfg, is_train=False)
    plain = build_refresh_generator(_with_refresh(cfg, generator="detector"), mapper)(model, dicts)
    reweighted = build_refresh_generator(_with_refresh(cfg, generator="detector_ncut"), mapper)(model, dicts)
    for d in dicts:
        # objectness x (1 + mean M) / 2 with mean M in [-1, 1]: never above the detector's best score
        assert reweighted[d["image_id"]][1].max() <= plain[d["image_id"]][1].max() + 1e-6


@pytest.mark.parametrize("name", ["detector", "rescore", "rescore_ncut", "rescore_online"])
def test_refresh_run_with_a_generator_publishes_a_complete_version(synthetic_cache, tmp_path, name):
    cfg = _pretrain_cfg(tmp_path / "out", "SOLVER.MAX_ITER", "3", "JOINDET.UPDATE_PERIOD_ITERS", "2",
                        "JOINDET.REFRESH.GENERATOR", name)
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    bank = PriorBank(bank_dir(cfg))
    assert bank.versions() == [0, 1]
    v0, v1 = bank.read(0), bank.read(1)
    assert v1.meta["info"]["source"] == name and v1.image_ids.tolist() == v0.image_ids.tolist()
    for image_id in v0.image_ids.tolist():
        old_boxes, _ = v0.get(image_id)
        new_boxes, new_scores = v1.get(image_id)
        assert 1 <= len(new_boxes) <= cfg.JOINDET.PRIORS.TOPK and np.isfinite(new_scores).all()
        if name in ("rescore", "rescore_online"):  # the same boxes, re-ranked by the blended scores
            np.testing.assert_allclose(np.sort(new_boxes, axis=0), np.sort(old_boxes, axis=0), atol=1e-4)


def test_compare_priors_scores_sources_and_generators(synthetic_cache, tmp_path, capsys):
    from joindet.tools import compare_priors

    cfg = _pretrain_cfg(tmp_path / "out")
    dicts = DatasetCatalog.get(DATASET)
    rng = np.random.default_rng(1)
    boxes = [np.float32([[2, 2, 30, 30], [10, 20, 40, 60]]) + rng.uniform(0, 3, (1, 4)).astype(np.float32)
             for _ in dicts]
    PriorBank(tmp_path / "bank").write_version(0, [d["image_id"] for d in dicts], boxes,
                                               [np.float32([0.9, 0.5])] * len(dicts))
    opts = [*TINY_PRETRAIN_OPTS_FOR_TOOL, "OUTPUT_DIR", str(tmp_path / "out")]
    rows = compare_priors.main(["--config-file", str(PRETRAIN_CONFIG), "--sources", "random_crops",
                                "--generators", "rescore", "detector", "--bank", str(tmp_path / "bank"),
                                "--dataset", "synth_train", "--json", str(tmp_path / "rows.json"), "--opts", *opts])
    labels = [label for label, _ in rows]
    assert labels == ["random_crops (version 0)", "bank v0", "rescore (current)", "rescore (smoothed with v0)",
                      "detector (current)", "detector (smoothed with v0)"]
    by_label = dict(rows)
    # re-scoring keeps the boxes: the same recall as the bank it re-scored
    assert by_label["rescore (current)"]["R50@30"] == by_label["bank v0"]["R50@30"]
    assert all(r["num_images"] == 8 for _, r in rows)
    assert "| random_crops (version 0)" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "rows.json").read_text())) == 6
    assert cfg.DATASETS.TRAIN == (DATASET,)


# --------------------------------------------------------------------------- refresh benchmark (smoke)
def test_refresh_benchmark_smoke(synthetic_cache, tmp_path, capsys):
    """``joindet.benchmarks.refresh`` on 6 images of 64 px, tiny model: one row per generator, the epoch
    shared by all rows, the percentage relative to that epoch (as printed), a bank version per refresh,
    its own synthetic set. No timing assertion (the machine is shared)."""
    from joindet.benchmarks import refresh as bench

    opts = [*TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS, "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    out = tmp_path / "bench"
    rows = bench.main(["--num-images", "6", "--generators", "rescore", "ncut_encoder", "rescore_online",
                       "--output-dir", str(out), "--json", str(tmp_path / "refresh.json"), *opts])
    printed = capsys.readouterr().out
    # the online generator first: it scores the views of the version the epoch trained on
    assert [r["generator"] for r in rows] == ["rescore_online", "rescore", "ncut_encoder"]
    assert [r["version"] for r in rows] == [1, 2, 3]  # each refresh wrote the next bank version
    # the online refresh re-scored version 0's boxes from the epoch's views (3 iterations x 2 of the 6 images)
    v1 = PriorBank(out / "run" / "prior_bank").read(1)
    assert v1.meta["info"]["source"] == "rescore_online" and v1.meta["info"]["images_kept_previous"] < 6
    assert len({r["epoch_s"] for r in rows}) == 1  # one epoch, measured once, shared by the rows
    for r in rows:
        assert r["images"] == 6 and r["epoch_iters"] == 3 and r["ims_per_batch"] == 2
        assert r["epoch_s"] > 0 and r["refresh_s"] > 0 and 0 < r["generate_s"] <= r["refresh_s"]
        assert r["smooth_gather_write_s"] > 0
        assert r["smooth_gather_write_s"] == pytest.approx(r["refresh_s"] - r["generate_s"])
        assert r["s_per_image"] == pytest.approx(r["refresh_s"] / 6)
        # epoch-relative: the row's and the printed percentage are refresh_s / epoch_s * 100
        pct = r["refresh_s"] / r["epoch_s"] * 100
        assert r["refresh_pct_of_epoch"] == pytest.approx(pct)
        assert r["within_target"] == ("yes" if r["refresh_pct_of_epoch"] <= bench.TARGET_PCT else "no")
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"| {r['generator']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[bench.COLUMNS.index("refresh_pct_of_epoch")] == f"{pct:.2f}"
        assert cells[bench.COLUMNS.index("epoch_s")] == f"{r['epoch_s']:.2f}"
    assert json.loads((tmp_path / "refresh.json").read_text()) == rows
    assert PriorBank(out / "run" / "prior_bank").versions() == [0, 1, 2, 3]
    assert (out / "synthetic").is_dir()  # its own synthetic set, not the shared cache
