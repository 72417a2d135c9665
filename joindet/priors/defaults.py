"""The defaults of the object-prior settings, each declared once.

The components take their argument defaults from here (the version-0 sources, the refresh generators,
``BoxSmoothSettings``, ``PriorRefreshHook``, ``generate_ncut_priors``), and so do the ``JOINDET.*`` keys of
``joindet.config`` that configure them: a LazyConfig's ``L(Class)()`` and a yacs config's defaults build the
same component (``tests/test_config_validation.py`` checks every ``from_config`` against the class defaults).
"""
__all__ = [
    "TOPK", "NCUT_TAU", "NCUT_TAU_QUANTILE", "NCUT_EPS", "NCUT_NUM_ROUNDS", "NCUT_NMS_THRESHOLD", "NCUT_CENTER", "NCUT_SOLVER",
    "NCUT_BATCH_SIZE", "NCUT_FEATURE_LEVEL", "NCUT_BACKBONE_FEATURE", "NCUT_COLOR_PATCH", "NCUT_COLOR_TAU",
    "SELECTIVE_SEARCH_MIN_SIDE", "SELECTIVE_SEARCH_NUM_WORKERS", "RANDOM_CROPS_SEED", "REFRESH_BATCH_SIZE",
    "REFRESH_NMS_THRESHOLD", "REFRESH_TEACHER_MOMENTUM", "SMOOTH_MOMENTUM", "SMOOTH_IOU_THRESHOLD",
    "SMOOTH_SOFT_NMS_SIGMA", "SMOOTH_RULES", "SMOOTH_RULE", "SMOOTH_MIN_SCORE", "REFRESH_PERIOD",
    "TRAIN_TOPK", "OBJECTNESS_TARGET", "PRIOR_LOSS_WEIGHT", "DROP_LOSS_IOU",
]

TOPK = 30  # priors kept per image, K (JOINDET.PRIORS.TOPK)
# NCut (the eigen attention map) of the ncut_* sources and refreshes (JOINDET.NCUT.*)
NCUT_TAU = 0.2  # affinity threshold tau of Eq. 1 (cosine similarity)
NCUT_TAU_QUANTILE = 0.0  # > 0: each image's tau is this quantile of its patch-pair cosines (tau unused)
NCUT_EPS = 1e-5  # affinity below tau (keeps the graph connected)
NCUT_NUM_ROUNDS = 3  # NCut rounds per image, found patches masked out (MaskCut)
NCUT_NMS_THRESHOLD = 0.7  # NMS over an image's priors before the top K
NCUT_CENTER = False  # subtract each image's mean feature before the cosine affinity
NCUT_SOLVER = "lanczos"  # eigen solver: lanczos or dense
NCUT_BATCH_SIZE = 4  # images per batch of NCut prior generation
NCUT_FEATURE_LEVEL = -1  # encoder level cut by a refresh (an index into the levels)
NCUT_BACKBONE_FEATURE = "res4"  # backbone feature cut by the ncut_backbone source
NCUT_COLOR_PATCH = 8  # ncut_color: patch size (pixels) of the mean colours
NCUT_COLOR_TAU = 0.99  # ncut_color: tau on RGB vectors
SELECTIVE_SEARCH_MIN_SIDE = 128  # selective search: shorter side the image is resized to (DETReg)
SELECTIVE_SEARCH_NUM_WORKERS = 2  # processes computing selective-search priors
RANDOM_CROPS_SEED = 0  # random-crop priors: seed
REFRESH_BATCH_SIZE = 4  # detector, detector_ncut, rescore: images per forward pass of a refresh
REFRESH_NMS_THRESHOLD = 0.7  # detector refreshes: NMS over an image's detections before the top K
REFRESH_TEACHER_MOMENTUM = 0.0  # > 0: refreshes read an EMA teacher of this momentum (0 = the model itself)
SMOOTH_MOMENTUM = 0.45  # Box Smooth m_s: weight of the precedent priors
SMOOTH_IOU_THRESHOLD = 0.48  # Box Smooth clustering IoU threshold
SMOOTH_SOFT_NMS_SIGMA = 0.0  # Gaussian Soft-NMS of the merged scores (0 = none, the paper's module)
SMOOTH_RULES = ("box_smooth", "replace")  # the merge rules of a refresh (joindet.priors.box_smooth)
SMOOTH_RULE = "box_smooth"  # merge rule: box_smooth (the paper's) or replace (CutLER's self-training merge)
SMOOTH_MIN_SCORE = 0.0  # current priors scored below this take no part in the merge
REFRESH_PERIOD = 0  # iterations between prior refreshes (0 = never: fixed priors)
# how the priors supervise the detector (the pretraining mapper, the JoinDet model and its criterion)
TRAIN_TOPK = 0  # the highest-scored priors of an image that supervise the detector (0 = all K)
OBJECTNESS_TARGET = "one"  # objectness target of a prior's matched query: "one" or "refreshed_score"
PRIOR_LOSS_WEIGHT = "one"  # loss weight of a prior's matched pair: "one" or "refreshed_score"
DROP_LOSS_IOU = 0.0  # DropLoss: no no-object term off every prior at this IoU (0 = off)
