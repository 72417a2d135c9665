# offline analysis (issue 12, session 4): does Gaussian soft-NMS of a bank version's scores (boxes kept) change
# its AP / CorLoc?  usage: python soft_nms_offline.py BANK [DATASET]; superseded by
# python -m joindet.tools.eval_priors --soft-nms-sigma 0.5 (same numbers), kept as what was run
import sys, numpy as np, torch
from torchvision.ops import box_iou
from detectron2.data import DatasetCatalog
from joindet.data.synthetic import register_synthetic
from joindet.priors.bank import PriorBank
from joindet.evaluation.prior_quality import evaluate_priors

from joindet.data.clutter import register_clutter
register_synthetic(name_prefix="synth"); register_clutter()
dicts = DatasetCatalog.get(sys.argv[2] if len(sys.argv) > 2 else "synth_train")
bank = PriorBank(sys.argv[1])

def soft_nms(boxes, scores, sigma):
    b = torch.as_tensor(boxes, dtype=torch.float64); s = torch.as_tensor(scores, dtype=torch.float64).clone()
    iou = box_iou(b, b); out = s.clone(); alive = torch.ones(len(s), dtype=torch.bool)
    for _ in range(len(s)):
        i = int(torch.where(alive, out, torch.full_like(out, -1)).argmax()); alive[i] = False
        out[alive] *= torch.exp(-iou[i, alive] ** 2 / sigma)
    return out.numpy()

for v in bank.versions():
    pv = bank.read(v)
    ids = pv.image_ids.tolist()
    row = {"plain": evaluate_priors(pv, dicts)}
    for sigma in (0.5,):
        row[f"snms{sigma}"] = evaluate_priors({i: (pv.get(i)[0], soft_nms(*pv.get(i), sigma)) for i in ids}, dicts)
    for k, r in row.items():
        print(f"v{v} {k:9s} AR@1 {r['AR@1']:.1f} AR@10 {r['AR@10']:.1f} AP {r['AP']:.1f} AP50 {r['AP50']:.1f} CorLoc {r['CorLoc']:.1f}")
