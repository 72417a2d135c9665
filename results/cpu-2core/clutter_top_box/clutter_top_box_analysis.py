# Size of each bank version's top-ranked prior against the clutter objects (and CorLoc).
# usage: python clutter_top_box_analysis.py BANK
import sys, numpy as np
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from joindet.data.clutter import register_clutter
from joindet.priors.bank import PriorBank
register_clutter()
dicts = {d["image_id"]: d for d in DatasetCatalog.get("clutter_train")}
bank = PriorBank(sys.argv[1])
def iou(a, b):
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    return inter / ((a[2]-a[0])*(a[3]-a[1]) + (b[:, 2]-b[:, 0])*(b[:, 3]-b[:, 1]) - inter)
gts = {i: np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]) for i, d in dicts.items()}
gt_area = np.concatenate([(g[:, 2]-g[:, 0])*(g[:, 3]-g[:, 1]) for g in gts.values()])
print("GT area median %.0f p10 %.0f p90 %.0f, per image %.1f" % (np.median(gt_area), np.percentile(gt_area, 10), np.percentile(gt_area, 90), np.mean([len(g) for g in gts.values()])))
for v in bank.versions():
    pv = bank.read(v); areas, hits, ranks_hit = [], [], []
    for i in pv.image_ids:
        b, s = pv.get(int(i)); o = np.argsort(-s, kind="stable"); b = b[o]
        areas.append((b[0, 2]-b[0, 0])*(b[0, 3]-b[0, 1]))
        hits.append(iou(b[0], gts[int(i)]).max() >= 0.5 if len(gts[int(i)]) else False)
        good = [iou(x, gts[int(i)]).max() >= 0.5 for x in b]
        ranks_hit.append(np.mean(good))
    print(f"v{v}: top-box area median {np.median(areas):.0f}, CorLoc {100*np.mean(hits):.1f}, share of priors hitting {100*np.mean(ranks_hit):.1f}")
