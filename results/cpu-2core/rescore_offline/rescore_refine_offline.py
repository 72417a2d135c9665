# Would moving each precedent box toward its matched query's box (instead of re-scoring
# only) tighten the priors? One offline refresh on rescore_features.py's output (the iteration-201 model of
# the objectness x IoU run, its bank's version-0 boxes): current = for each version-0 box, the box of the query
# overlapping it most when their IoU >= T (else the box itself), scored by matched_objectness; merged with
# version 0 by the Box Smooth Module (m 0.45, IoU 0.48, K 30, Soft-NMS 0.5): a merged box is the score-weighted
# mean of the two. usage: rescore_refine_offline.py FEATURES.npz DATASET
import sys, numpy as np, torch
from torchvision.ops import box_iou
from detectron2.data import DatasetCatalog
from joindet.data.synthetic import register_synthetic
from joindet.data.clutter import register_clutter
from joindet.evaluation.prior_quality import evaluate_priors
from joindet.priors.box_smooth import smooth_priors
from joindet.priors.rescore import rescore_quality
register_synthetic(name_prefix="synth"); register_clutter()
z = np.load(sys.argv[1]); dicts = DatasetCatalog.get(sys.argv[2]); ids = z["ids"].tolist()
print("| current boxes | AR@1 | AR@10 | AR@30 | R50@30 | AP | AP50 | CorLoc |\n|---|---|---|---|---|---|---|---|")
for thr in (None, 0.7, 0.5):
    out = {}
    for i in ids:
        b0, s0 = torch.as_tensor(z[f"boxes_{i}"]), torch.as_tensor(z[f"s0_{i}"])
        qb, qo = torch.as_tensor(z[f"qb_{i}"]), torch.as_tensor(z[f"qo_{i}"])
        q = rescore_quality(b0, qb, qo, "matched_objectness")
        cur = b0.clone()
        if thr is not None and len(b0):
            iou = box_iou(b0, qb); best_iou, best = iou.max(1)
            move = best_iou >= thr
            cur[move] = qb[best[move]]
        b, s = smooth_priors(b0.numpy(), s0.numpy(), cur.numpy(), q.numpy(), 0.45, 0.48, 30, 0.5)
        out[i] = (np.asarray(b), np.asarray(s))
    r = evaluate_priors(out, dicts)
    name = "the version-0 boxes (rescore)" if thr is None else f"matched query's box where IoU >= {thr}"
    print(f"| {name} | {r['AR@1']:.1f} | {r['AR@10']:.1f} | {r['AR@30']:.1f} | {r['R50@30']:.1f} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['CorLoc']:.1f} |")
