"""Start-up checks of JoinDet's config keys (``joindet.config``): every key has exactly one rule, each rule
kind refuses wrong types and out-of-range values with a message naming the key, the value and what is
allowed, the cross-key checks still apply, unknown or mistyped keys fail when merged (yacs), and the
components a LazyConfig builds with ``L(...)`` refuse the same bad values when instantiated."""
import functools
import inspect
import re
from pathlib import Path

import pytest
from detectron2.config import CfgNode, LazyConfig, get_cfg
from detectron2.engine import default_argument_parser

from joindet.config import CONFIG_RULES, add_joindet_config, check_config_value, validate_config
from joindet.engine.lazy import instantiate_with
from joindet.priors import PRIOR_SOURCE_REGISTRY
from joindet.priors.refresh import REFRESH_GENERATOR_REGISTRY

from conftest import MINI_CONFIG

LAZY_PRETRAIN = Path(__file__).resolve().parents[1] / "projects" / "JoinDet" / "configs" / "mini_joindet_pretrain_synth.py"


def _leaf_keys(node, prefix=""):
    """Dotted names of every value (not sub-node) of a CfgNode."""
    keys = set()
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _cfg_with(key, value):
    """The default JoinDet cfg with ``key`` set to ``value`` directly (no yacs type coercion, as code
    that builds a cfg by hand would)."""
    cfg = add_joindet_config(get_cfg())
    *parents, name = key.split(".")
    setattr(functools.reduce(getattr, parents, cfg), name, value)
    return cfg


def _registered(registry, what):
    return f"a registered {what}: " + ", ".join(repr(n) for n in sorted(n for n, _ in registry))


def test_every_joindet_key_has_a_rule_and_every_rule_a_key():
    full = _leaf_keys(add_joindet_config(get_cfg()))
    added = full - _leaf_keys(get_cfg())
    assert "JOINDET.SMOOTH.MOMENTUM" in added and "MODEL.WEIGHTS_NON_STRICT" in added
    assert sorted(added - set(CONFIG_RULES)) == []  # a new key needs a rule in joindet.config.CONFIG_RULES
    assert sorted(set(CONFIG_RULES) - full) == []  # no rule for a key that does not exist


def test_the_defaults_pass():
    validate_config(add_joindet_config(get_cfg()))


# (key, bad value, what the message must say is allowed): every rule kind, wrong types and bad ranges.
BAD_VALUES = [
    ("JOINDET.PRIORS.TOPK", "30", ">= 1 (an integer)"),  # a string for an int
    ("JOINDET.PRIORS.TOPK", 0, ">= 1 (an integer)"),
    ("JOINDET.PRIORS.TOPK", 2.5, ">= 1 (an integer)"),
    ("MODEL.DEFORMABLE_DETR.NUM_QUERIES", True, ">= 1 (an integer)"),  # a bool is not an integer here
    ("MODEL.DEFORMABLE_DETR.ENC_LAYERS", -1, ">= 0 (an integer)"),
    ("JOINDET.NCUT.FEATURE_LEVEL", "last", "an integer"),
    ("JOINDET.SMOOTH.MOMENTUM", "0.45", "in [0, 1] (a number)"),
    ("JOINDET.SMOOTH.MOMENTUM", 1.5, "in [0, 1] (a number)"),
    ("JOINDET.SMOOTH.IOU_THRESHOLD", 0.0, "in (0, 1) (a number)"),  # open bounds
    ("JOINDET.SMOOTH.IOU_THRESHOLD", 1.0, "in (0, 1) (a number)"),
    ("MODEL.DEFORMABLE_DETR.DROPOUT", 1.0, "in [0, 1) (a number)"),
    ("JOINDET.NCUT.TAU", -1.5, "in [-1, 1] (a number)"),
    ("JOINDET.NCUT.EPS", 0.0, "> 0 (a number)"),
    ("JOINDET.NCUT.TAU_QUANTILE", 1.0, "in [0, 1) (a number)"),
    ("JOINDET.REFRESH.NMS_THRESH", 0.0, "in (0, 1] (a number)"),
    ("JOINDET.REFRESH.TEACHER_MOMENTUM", 1.0, "in [0, 1) (a number)"),
    ("SOLVER.EPOCHS", -1.0, ">= 0 (a number)"),
    ("SOLVER.BASE_LR", 0.0, "> 0 (a number)"),
    ("MODEL.TIMM.FREEZE", 1, "True or False"),
    ("MODEL.TIMM.NAME", "", "a non-empty string"),
    ("DATASETS.TRANSFER_DIR", None, "a string"),
    ("JOINDET.NCUT.SOLVER", "eigh", "one of 'lanczos', 'dense'"),
    ("JOINDET.PRIORS.LOSS_WEIGHT", "score", "one of 'one', 'refreshed_score'"),
    ("JOINDET.EMBED_ENCODER", "copy", "one of 'backbone', 'frozen_copy'"),
    ("SOLVER.OPTIMIZER", "ADAM", "one of 'ADAMW', 'SGD' (in any case)"),
    ("JOINDET.NCUT.BACKBONE_FEATURE", "p4", "one of 'res1', 'res2', 'res3', 'res4', 'res5', 'res6'"),
    ("JOINDET.PRIORS.INIT_SOURCE", "ncut", _registered(PRIOR_SOURCE_REGISTRY, "prior source")),
    ("JOINDET.REFRESH.GENERATOR", "ncut", _registered(REFRESH_GENERATOR_REGISTRY, "refresh generator")),
    ("MODEL.TIMM.OUT_FEATURES", [], "a list of at least 1 item, each one of 'res1'"),
    ("MODEL.DEFORMABLE_DETR.IN_FEATURES", ["res5", "p6"], "a list of at least 1 item, each one of 'res1'"),
    ("MODEL.DEFORMABLE_DETR.IN_FEATURES", "res5", "a list of at least 1 item"),  # a string is not a list
    ("DATASETS.IMAGE_FOLDERS", ("imagenet",), "a list, each a string of the form 'name=path'"),
    ("DATASETS.IMAGE_FOLDERS", ("=datasets/imagenet",), "a list, each a string of the form 'name=path'"),
    ("SOLVER.STEP_EPOCHS", (40, -1), "a list, each >= 0 (a number)"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ValueError) as refused:
        validate_config(_cfg_with(key, value))
    message = str(refused.value)
    assert message.startswith("Invalid config: ") and key in message, message
    assert repr(value) in message, message
    assert allowed in message, message


@pytest.mark.parametrize("key, value", [
    ("JOINDET.SMOOTH.MOMENTUM", 0),  # an int where the default is a float: a number
    ("JOINDET.SMOOTH.MOMENTUM", 1.0),  # closed bound
    ("JOINDET.NCUT.FEATURE_LEVEL", -1),
    ("SOLVER.OPTIMIZER", "sgd"),
    ("JOINDET.PRIORS.INIT_SOURCE", "random_crops"),
    ("JOINDET.REFRESH.GENERATOR", "detector"),
    ("DATASETS.IMAGE_FOLDERS", ["imagenet_train=datasets/imagenet/train"]),
    ("SOLVER.STEP_EPOCHS", (40, 45.5)),
])
def test_allowed_edge_values_pass(key, value):
    validate_config(_cfg_with(key, value))


@pytest.mark.parametrize("changes, pattern", [
    ({"MODEL.DEFORMABLE_DETR.HIDDEN_DIM": 96, "MODEL.DEFORMABLE_DETR.NHEADS": 5}, r"HIDDEN_DIM \(96\) must be divisible by NHEADS \(5\)"),
    ({"MODEL.DEFORMABLE_DETR.HIDDEN_DIM": 48, "MODEL.DEFORMABLE_DETR.NHEADS": 8}, r"HIDDEN_DIM \(48\) must be a multiple of 32"),
    ({"MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS": 2}, r"NUM_FEATURE_LEVELS \(2\) must be >= len\(IN_FEATURES\) \(3\)"),
    ({"MODEL.DEFORMABLE_DETR.TWO_STAGE": True}, r"TWO_STAGE needs MODEL\.DEFORMABLE_DETR\.WITH_BOX_REFINE"),
    ({"MODEL.TIMM.WEIGHTS": "lite0.pth", "MODEL.TIMM.PRETRAINED": True}, r"WEIGHTS and MODEL\.TIMM\.PRETRAINED are exclusive"),
    ({"JOINDET.LSJ.MIN_SCALE": 2.5}, r"JOINDET\.LSJ\.MIN_SCALE \(2\.5\) must be <= JOINDET\.LSJ\.MAX_SCALE \(2\.0\)"),
    ({"MODEL.LOAD_PROPOSALS": True}, r"MODEL\.LOAD_PROPOSALS must be False.*unpickle DATASETS\.PROPOSAL_FILES_"),
])
def test_cross_key_checks(changes, pattern):
    cfg = add_joindet_config(get_cfg())
    for key, value in changes.items():
        *parents, name = key.split(".")
        setattr(functools.reduce(getattr, parents, cfg), name, value)
    with pytest.raises(ValueError, match=pattern):
        validate_config(cfg)


def _setup_args(tmp_path, config_file, *opts):
    return default_argument_parser().parse_args(
        ["--config-file", str(config_file), *opts, "OUTPUT_DIR", str(tmp_path / "output")])


def test_a_misspelt_key_in_a_yaml_file_fails_at_merge(tmp_path):
    from joindet.engine.launcher import setup

    config = tmp_path / "misspelt.yaml"
    config.write_text(f'_BASE_: "{MINI_CONFIG}"\nJOINDET:\n  SMOOTH:\n    MOMENTUMM: 0.3\n')
    with pytest.raises(KeyError, match=r"Non-existent config key: JOINDET\.SMOOTH\.MOMENTUMM"):
        setup(_setup_args(tmp_path, config))
    assert not (tmp_path / "output").exists()


def test_a_misspelt_or_mistyped_key_on_the_command_line_fails_at_merge(tmp_path):
    from joindet.engine.launcher import setup

    # yacs's merge_from_list asserts the key exists (a KeyError where Python runs with -O)
    with pytest.raises((AssertionError, KeyError), match=r"Non-existent key: JOINDET\.SMOOTH\.MOMENTUMM"):
        setup(_setup_args(tmp_path, MINI_CONFIG, "JOINDET.SMOOTH.MOMENTUMM", "0.3"))
    with pytest.raises(ValueError, match=r"Type mismatch.*JOINDET\.PRIORS\.TOPK"):
        setup(_setup_args(tmp_path, MINI_CONFIG, "JOINDET.PRIORS.TOPK", "thirty"))
    with pytest.raises(ValueError, match=r"JOINDET\.SMOOTH\.MOMENTUM must be in \[0, 1\] \(a number\), got 1\.5"):
        setup(_setup_args(tmp_path, MINI_CONFIG, "JOINDET.SMOOTH.MOMENTUM", "1.5"))
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("path, value, message, yacs_key", [
    ("smooth.momentum", 1.5, "momentum must be in [0, 1], got 1.5", "JOINDET.SMOOTH.MOMENTUM"),
    ("smooth.iou_threshold", 1.0, "iou_threshold must be in (0, 1), got 1.0", "JOINDET.SMOOTH.IOU_THRESHOLD"),
    ("smooth.soft_nms_sigma", -1.0, "soft_nms_sigma must be >= 0", "JOINDET.SMOOTH.SOFT_NMS_SIGMA"),
    ("smooth.rule", "cutler", "rule must be one of ['box_smooth', 'replace']", "JOINDET.SMOOTH.RULE"),
    ("smooth.min_score", -0.5, "min_score must be >= 0", "JOINDET.SMOOTH.MIN_SCORE"),
    ("init_source.topk", 0, "topk must be an integer >= 1, got 0", "JOINDET.PRIORS.TOPK"),
    ("period", -1, "the refresh period must be an integer >= 0", "JOINDET.UPDATE_PERIOD_ITERS"),
])
def test_the_lazy_prior_components_refuse_what_the_yacs_rules_refuse(path, value, message, yacs_key):
    cfg = LazyConfig.load(str(LAZY_PRETRAIN))
    hook = cfg.prior_hook
    hook.eval_dicts = None  # no dataset registered here
    parts = {"active_priors": object(), "dataset_dicts": [], "dataset_name": "none"}
    instantiate_with(hook, **parts)  # the shipped values pass
    node, name = (hook, path) if "." not in path else (hook[path.split(".")[0]], path.split(".")[1])
    node[name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        instantiate_with(hook, **parts)
    with pytest.raises(ValueError):  # the yacs key's rule refuses it too
        check_config_value(yacs_key, value)


def _defaults(func):
    return {k: p.default for k, p in inspect.signature(func).parameters.items() if p.default is not p.empty}


def test_every_prior_component_defaults_to_the_yacs_defaults():
    """A LazyConfig's ``L(Class)()`` and the yacs defaults build the same components: every argument that a
    class's ``from_config`` reads from the default config equals the argument's default in the class."""
    from joindet.engine.prior_hook import PriorRefreshHook
    from joindet.priors.box_smooth import BoxSmoothSettings
    from joindet.priors.generation import generate_ncut_priors
    from joindet.priors.refresh import NCutEncoderGenerator

    cfg = add_joindet_config(get_cfg())
    classes = [cls for _, cls in PRIOR_SOURCE_REGISTRY] + [cls for _, cls in REFRESH_GENERATOR_REGISTRY]
    checked = 0
    for cls in [*classes, BoxSmoothSettings]:
        args = cls.from_config(cfg) if cls is BoxSmoothSettings else cls.from_config(cfg, mapper=None)
        defaults = _defaults(cls.__init__)
        if cls is NCutEncoderGenerator:  # its NCut arguments go to generate_ncut_priors, whose defaults apply
            defaults = {**_defaults(generate_ncut_priors), **defaults}
        for name, value in args.items():
            if name in defaults:
                assert value == defaults[name], (cls.__name__, name)
                checked += 1
    assert checked >= 30
    hook = PriorRefreshHook.from_config(cfg, active_priors=None, dataset_dicts=[], mapper=None)
    assert hook["period"] == _defaults(PriorRefreshHook.__init__)["period"]
    assert hook["smooth"] == _defaults(PriorRefreshHook.__init__)["smooth"] == BoxSmoothSettings()
    assert hook["teacher_momentum"] == _defaults(PriorRefreshHook.__init__)["teacher_momentum"] == 0.0


def test_the_merge_rules_of_the_yacs_key_are_those_of_the_settings():
    from joindet.priors import defaults as D
    assert CONFIG_RULES["JOINDET.SMOOTH.RULE"].options == D.SMOOTH_RULES
