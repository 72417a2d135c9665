"""How a rescore refresh scores a precedent prior (joindet.priors.rescore): both qualities by hand, the
size bias of the IoU factor that ``matched_objectness`` removes, the refusal of an unknown one (the
``rescore`` generator against the formula on the model's predictions: tests/test_refresh.py)."""
import pytest
import torch

from detectron2.config import get_cfg

from joindet.config import CONFIG_RULES, add_joindet_config
from joindet.priors.rescore import DEFAULT_RESCORE_QUALITY, RESCORE_QUALITIES, rescore_quality

from conftest import build_cfg
from test_pretraining import PRETRAIN_CONFIG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRIORS = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # query 0 repeats it exactly, query 1 overlaps it by 0.25
                       [50.0, 50.0, 60.0, 60.0],  # no query box overlaps it
                       [0.0, 0.0, 100.0, 100.0]])  # a large box around both queries
QUERIES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 5.0]])
OBJECTNESS = torch.tensor([0.2, 0.9])


def test_objectness_x_iou_by_hand():
    got = rescore_quality(PRIORS, QUERIES, OBJECTNESS, "objectness_x_iou")
    # prior 0: max(0.2 x 1, 0.9 x 0.25); prior 1: nothing overlaps; prior 2: max(0.2 x 0.01, 0.9 x 0.0025)
    torch.testing.assert_close(got, torch.tensor([0.225, 0.0, 0.00225]))


def test_matched_objectness_by_hand():
    got = rescore_quality(PRIORS, QUERIES, OBJECTNESS, "matched_objectness")
    # prior 0: query 0 overlaps it most (IoU 1); prior 1: none overlaps; prior 2: query 0 (IoU 0.01 > 0.0025)
    torch.testing.assert_close(got, torch.tensor([0.2, 0.0, 0.2]))


def test_matched_objectness_does_not_reward_how_exactly_a_box_is_repeated():
    # a small prior the model sees as an object (objectness 0.9) but localises loosely (IoU 0.5), and a
    # large prior it repeats exactly with objectness 0.5: the IoU factor ranks the large one first
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 80.0, 80.0]])
    queries = torch.tensor([[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 80.0, 80.0]])
    objectness = torch.tensor([0.9, 0.5])
    x_iou = rescore_quality(priors, queries, objectness, "objectness_x_iou")
    matched = rescore_quality(priors, queries, objectness, "matched_objectness")
    assert x_iou[1] > x_iou[0] and matched[0] > matched[1]
    torch.testing.assert_close(matched, objectness)


@pytest.mark.parametrize("quality", RESCORE_QUALITIES)
def test_no_priors_or_no_queries_give_zeros(quality):
    assert rescore_quality(torch.zeros(0, 4), QUERIES, OBJECTNESS, quality).shape == (0,)
    torch.testing.assert_close(rescore_quality(PRIORS, torch.zeros(0, 4), OBJECTNESS[:0], quality), torch.zeros(3))


def test_unknown_quality_is_refused_by_name():
    with pytest.raises(ValueError, match="RESCORE_QUALITY: unknown rescore quality 'iou'.*matched_objectness"):
        rescore_quality(PRIORS, QUERIES, OBJECTNESS, "iou")
    with pytest.raises(ValueError, match=r"JOINDET\.REFRESH\.RESCORE_QUALITY"):
        build_cfg(["JOINDET.REFRESH.RESCORE_QUALITY", "iou"], config_file=PRETRAIN_CONFIG, data_opts=False)


def test_the_config_key_offers_the_qualities_of_the_module_with_its_default():
    assert set(CONFIG_RULES["JOINDET.REFRESH.RESCORE_QUALITY"].options) == set(RESCORE_QUALITIES)
    assert add_joindet_config(get_cfg()).JOINDET.REFRESH.RESCORE_QUALITY == DEFAULT_RESCORE_QUALITY
