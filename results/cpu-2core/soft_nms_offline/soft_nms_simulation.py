# Where should Soft-NMS go in the rescore refresh? Simulated on a real rescore run's bank (boxes fixed, objectness
# target "one": the training never sees the scores, so the model's raw scores q_v = (s_v - m s_{v-1}) / (1 - m)
# are what the refresh gave), each refresh replayed three ways: "A_generator" (Soft-NMS of the current scores,
# before the Box Smooth merge), "B_after_smooth" (Soft-NMS of the merged scores: what JOINDET.SMOOTH.SOFT_NMS_SIGMA
# does) and "none". usage: python soft_nms_simulation.py BANK DATASET (e.g. output/demo/pretrain/prior_bank synth_train)
import sys, numpy as np, torch
from detectron2.data import DatasetCatalog
from joindet.data.clutter import register_clutter
from joindet.data.synthetic import register_synthetic
from joindet.evaluation.prior_quality import evaluate_priors
from joindet.priors.bank import PriorBank
from joindet.priors.box_smooth import soft_nms_scores
register_synthetic(name_prefix="synth"); register_clutter()
dicts = DatasetCatalog.get(sys.argv[2])
bank = PriorBank(sys.argv[1])
def soft_nms(boxes, scores, sigma):
    s = torch.as_tensor(scores, dtype=torch.float64)
    return soft_nms_scores(torch.as_tensor(boxes, dtype=torch.float64), s, torch.zeros(len(s), dtype=torch.long), 1,
                           sigma).numpy()
M = 0.45
vers = [bank.read(v) for v in bank.versions()]
ids = vers[0].image_ids.tolist()
def aligned(pv, ref_boxes, i):
    b, s = pv.get(i)
    idx = [int(np.where((np.abs(b - rb).max(1) < 1e-3))[0][0]) for rb in ref_boxes]
    return s[idx]
res = {"A_generator": {}, "B_after_smooth": {}, "none": {}}
prev = {k: {i: vers[0].get(i)[1].astype(np.float64) for i in ids} for k in res}
boxes = {i: vers[0].get(i)[0] for i in ids}
for v in range(1, len(vers)):
    for k in res:
        cur = {}
        for i in ids:
            s_v = aligned(vers[v], boxes[i], i); s_p = aligned(vers[v - 1], boxes[i], i)
            q = (s_v - M * s_p) / (1 - M)
            if k == "A_generator":
                cur[i] = M * prev[k][i] + (1 - M) * soft_nms(boxes[i], q, 0.5)
            elif k == "B_after_smooth":
                cur[i] = soft_nms(boxes[i], M * prev[k][i] + (1 - M) * q, 0.5)
            else:
                cur[i] = M * prev[k][i] + (1 - M) * q
        prev[k] = cur
        r = evaluate_priors({i: (boxes[i], cur[i]) for i in ids}, dicts)
        print(f"v{v} {k:15s} AR@1 {r['AR@1']:.1f} AR@10 {r['AR@10']:.1f} R50@30 {r['R50@30']:.1f} AP {r['AP']:.1f} AP50 {r['AP50']:.1f} CorLoc {r['CorLoc']:.1f}")
