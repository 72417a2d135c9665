# The object-prior settings of JoinDet pretraining: the `joindet` section of a LazyConfig. It mirrors the
# yacs keys of joindet/config.py one to one, with the defaults there: joindet.priors.* = JOINDET.PRIORS.*,
# joindet.ncut.* = JOINDET.NCUT.*, joindet.smooth.* = JOINDET.SMOOTH.*, joindet.refresh.* = JOINDET.REFRESH.*
# (keys in lower case) and
# joindet.update_period_iters = JOINDET.UPDATE_PERIOD_ITERS (joindet.engine.pretrain.prior_settings_from_cfg
# maps a yacs cfg onto this layout; joindet.engine.lazy checks a config has exactly these keys).
# JOINDET.UPDATE_PERIOD is in epochs: a config sets update_period_iters from it with common/schedule.py's
# iters_per_epoch, as it sets train.max_iter. The rest of JOINDET lives where a LazyConfig builds it:
# EMBED_DIM / EMBED_ENCODER / EMBED_LOSS_WEIGHT in the model (common/models/joindet.py), EMBED_CROP_SIZE and
# LSJ.* in dataloader.train.mapper (common/data/pretrain_coco.py).
#
# init_source_kwargs: the arguments of each version-0 source, build_prior_source(priors.init_source,
# **init_source_kwargs[priors.init_source]) -- the values each source's from_config reads on the yacs side,
# by interpolation, so that `joindet.priors.init_source=random_crops` alone switches the source.
# ncut_backbone also gets dataloader.prior_mapper (added by joindet.engine.lazy).
joindet = dict(
    priors=dict(
        bank_dir="",  # prior bank folder; "" = train.output_dir/prior_bank
        init_source="ncut_backbone",  # version 0: ncut_backbone, ncut_color, selective_search, random_crops
        topk=30,  # priors kept per image (K)
        train_topk=0,  # the highest-scored priors of an image that supervise the detector (0 = all K)
        # objectness target of a prior's matched query: "one", or "refreshed_score" (a refreshed version's
        # priors: score / the image's best; version 0's: 1); the model reads it (common/models/joindet.py)
        objectness_target="one",
        min_side=128,  # selective search: shorter side the image is resized to (DETReg)
        num_workers=2,  # processes computing selective-search priors
        seed=0,  # random-crop priors: seed
        eval_dataset="",  # dataset with boxes to score each prior version against ("" = none)
    ),
    ncut=dict(
        tau=0.2,  # affinity threshold tau of Eq. 1 (cosine similarity)
        eps=1e-5,  # affinity below tau (keeps the graph connected)
        center=False,  # subtract each image's mean feature before the cosine affinity
        num_rounds=3,  # NCut rounds per image, found patches masked out (MaskCut)
        nms_thresh=0.7,  # NMS over an image's priors before the top K
        feature_level=-1,  # encoder level whose patch features are cut (index into the levels)
        backbone_feature="res4",  # backbone feature cut by the ncut_backbone source
        color_patch=8,  # ncut_color source: patch size (pixels) of the mean colours
        color_tau=0.99,  # ncut_color source: tau on RGB vectors (all close in angle)
        solver="lanczos",  # eigen solver: lanczos (partial, float32 + float64 fallback) or dense (float64 eigh)
        batch_size=4,  # images per batch when generating priors
    ),
    smooth=dict(
        momentum=0.45,  # m_s: weight of the precedent priors in the Box Smooth Module
        iou_threshold=0.48,  # clustering IoU threshold of the Box Smooth Module
        soft_nms_sigma=0.0,  # Gaussian Soft-NMS of the merged scores (boxes kept; 0 = none, the paper's module)
    ),
    refresh=dict(
        generator="ncut_encoder",  # refresh: ncut_encoder (the paper), detector, detector_ncut, rescore, rescore_online
        nms_thresh=0.7,  # detector generators: NMS over an image's detections before the top K
        rescore_quality="matched_objectness",  # rescore generators: matched_objectness or objectness_x_iou
    ),
    update_period_iters=0,  # iterations between prior refreshes; 0 = fixed priors (DETReg-like)
    init_source_kwargs=dict(
        ncut_backbone=dict(
            feature="${joindet.ncut.backbone_feature}",
            weights="${train.init_checkpoint}",  # part of the version-0 cache key (MODEL.WEIGHTS)
            batch_size="${joindet.ncut.batch_size}",
            tau="${joindet.ncut.tau}",
            eps="${joindet.ncut.eps}",
            num_rounds="${joindet.ncut.num_rounds}",
            topk="${joindet.priors.topk}",
            nms_threshold="${joindet.ncut.nms_thresh}",
            center="${joindet.ncut.center}",
            solver="${joindet.ncut.solver}",
        ),
        selective_search=dict(
            topk="${joindet.priors.topk}",
            min_side="${joindet.priors.min_side}",
            num_workers="${joindet.priors.num_workers}",
        ),
        ncut_color=dict(
            patch="${joindet.ncut.color_patch}",
            tau="${joindet.ncut.color_tau}",
            eps="${joindet.ncut.eps}",
            num_rounds="${joindet.ncut.num_rounds}",
            topk="${joindet.priors.topk}",
            nms_threshold="${joindet.ncut.nms_thresh}",
            solver="${joindet.ncut.solver}",
        ),
        random_crops=dict(topk="${joindet.priors.topk}", seed="${joindet.priors.seed}"),
    ),
)
