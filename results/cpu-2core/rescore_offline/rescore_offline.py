# Which re-scoring of the version-0 boxes ranks objects first? Reads rescore_features.py's
# output; every quality scored raw, after Soft-NMS (sigma 0.5) and as the Box Smooth Module would publish it
# (0.45 x version-0 score + 0.55 x quality, then Soft-NMS). usage: python rescore_offline.py FEATURES.npz DATASET
import sys, numpy as np, torch
from detectron2.data import DatasetCatalog
from joindet.data.synthetic import register_synthetic
from joindet.data.clutter import register_clutter
from joindet.evaluation.prior_quality import evaluate_priors
from joindet.priors.box_smooth import soft_nms_scores
register_synthetic(name_prefix="synth"); register_clutter()
z = np.load(sys.argv[1]); dicts = DatasetCatalog.get(sys.argv[2]); ids = z["ids"].tolist()
B = {i: z[f"boxes_{i}"] for i in ids}; F = {i: z[f"f_{i}"] for i in ids}; S0 = {i: z[f"s0_{i}"] for i in ids}
def snms(scores):
    out = {}
    for i in ids:
        b = torch.as_tensor(B[i], dtype=torch.float64); s = torch.as_tensor(scores[i], dtype=torch.float64)
        out[i] = soft_nms_scores(b, s, torch.zeros(len(s), dtype=torch.long), 1, 0.5).numpy()
    return out
rng = np.random.default_rng(0)
qualities = {
    "v0 score (selective search)": S0,
    "random": {i: rng.random(len(S0[i])) for i in ids},
    "max obj x IoU (rescore today)": {i: F[i][:, 0] for i in ids},
    "obj of best-IoU query": {i: F[i][:, 1] for i in ids},
    "best IoU": {i: F[i][:, 2] for i in ids},
    "max obj x IoU, IoU>=0.5": {i: F[i][:, 3] for i in ids},
    "sum obj x IoU": {i: F[i][:, 4] for i in ids},
    "obj x IoU^2 (max over q)": None,
}
qualities.pop("obj x IoU^2 (max over q)")
def row(name, sc):
    r = evaluate_priors({i: (B[i], np.asarray(sc[i], np.float32)) for i in ids}, dicts)
    return f"| {name} | {r['AR@1']:.1f} | {r['AR@10']:.1f} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['CorLoc']:.1f} |"
print("| quality | AR@1 | AR@10 | AP | AP50 | CorLoc |\n|---|---|---|---|---|---|")
for name, q in qualities.items():
    print(row(name + ", raw", q)); print(row(name + ", Soft-NMS", snms(q)))
    if name.startswith("v0") or name == "random":
        continue
    print(row(name + ", smoothed + Soft-NMS", snms({i: 0.45 * S0[i] + 0.55 * q[i] for i in ids})))
