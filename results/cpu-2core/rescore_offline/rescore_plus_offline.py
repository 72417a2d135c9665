# Would adding the model's own detections to the re-scored precedent boxes raise recall?
# One offline refresh on rescore_features.py's output (the iteration-201 model of the objectness x IoU run, its
# bank's version-0 boxes): current = the version-0 boxes scored by matched_objectness, plus the model's top-N
# detections (NMS 0.7) that overlap no version-0 box by IoU >= 0.48, scored by their objectness; merged with
# version 0 by the Box Smooth Module (m 0.45, IoU 0.48, K 30, Soft-NMS 0.5). usage: rescore_plus_offline.py FEATURES.npz DATASET
import sys, numpy as np, torch
from torchvision.ops import box_iou, nms
from detectron2.data import DatasetCatalog
from joindet.data.synthetic import register_synthetic
from joindet.data.clutter import register_clutter
from joindet.evaluation.prior_quality import evaluate_priors
from joindet.priors.box_smooth import smooth_priors
from joindet.priors.rescore import rescore_quality
register_synthetic(name_prefix="synth"); register_clutter()
z = np.load(sys.argv[1]); dicts = DatasetCatalog.get(sys.argv[2]); ids = z["ids"].tolist()
def refresh(n_new):
    out, added = {}, []
    for i in ids:
        b0, s0 = torch.as_tensor(z[f"boxes_{i}"]), torch.as_tensor(z[f"s0_{i}"])
        qb, qo = torch.as_tensor(z[f"qb_{i}"]), torch.as_tensor(z[f"qo_{i}"])
        cur_b, cur_s = b0, rescore_quality(b0, qb, qo, "matched_objectness")
        if n_new:
            keep = nms(qb, qo, 0.7)
            keep = keep[box_iou(qb[keep], b0).amax(1) < 0.48][:n_new] if len(b0) else keep[:n_new]
            cur_b, cur_s = torch.cat([cur_b, qb[keep]]), torch.cat([cur_s, qo[keep]])
            added.append(len(keep))
        b, s = smooth_priors(b0.numpy(), s0.numpy(), cur_b.numpy(), cur_s.numpy(), 0.45, 0.48, 30, 0.5)
        out[i] = (np.asarray(b), np.asarray(s))
    return out, (np.mean(added) if added else 0.0)
print("| current priors | new/img | AR@10 | AR@30 | R50@30 | AP | AP50 | CorLoc |\n|---|---|---|---|---|---|---|---|")
for n in (0, 5, 10, 30):
    pri, a = refresh(n)
    r = evaluate_priors(pri, dicts)
    print(f"| re-scored v0 + {n} detections | {a:.1f} | {r['AR@10']:.1f} | {r['AR@30']:.1f} | {r['R50@30']:.1f} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['CorLoc']:.1f} |")
