# Per-prior features for the offline re-scoring tests of this folder. For every version-0 prior of a trained
# run's bank, the trained model's queries (one forward pass per image, as the rescore refresh generator does):
# max_j obj_j * IoU_j (the objectness_x_iou quality), the best-IoU query's objectness and IoU, and two variants;
# also every query's box and objectness and the prior's version-0 score.
# usage: python rescore_features.py RUN_DIR CONFIG OUT.npz   (RUN_DIR holds model_final.pth and prior_bank/)
import sys, numpy as np, torch
from torchvision.ops import box_iou
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from joindet.checkpoint import JoinDetCheckpointer
from joindet.config import add_joindet_config, validate_config
from joindet.data.datasets import register_datasets
from joindet.data.mapper import DetrDatasetMapper
from joindet.priors.bank import PriorBank
from joindet.priors.generation import run_over_images
torch.set_num_threads(1)
run, cfg_file, out = sys.argv[1:4]
cfg = get_cfg(); add_joindet_config(cfg)
cfg.merge_from_file(cfg_file); cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
validate_config(cfg); register_datasets(cfg)
dicts = [d for n in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(n)]
model = build_model(cfg)
JoinDetCheckpointer(model).load(f"{run}/model_final.pth")
model.eval()
v0 = PriorBank(f"{run}/prior_bank").read(0)
rows = {}
def feats(m, batch):
    res = []
    for (boxes, obj), x in zip(m.objectness_predictions(batch), batch):
        pb = torch.as_tensor(v0.get(x["image_id"])[0], dtype=boxes.dtype)
        iou = box_iou(pb, boxes)  # (k, Q)
        best = iou.argmax(1)
        f = torch.stack([(iou * obj[None]).amax(1), obj[best], iou.amax(1),
                         (iou * (iou >= 0.5) * obj[None]).amax(1), (iou * obj[None]).sum(1)], 1)
        rows[x["image_id"]] = (pb.numpy(), f.numpy(), boxes.numpy(), obj.numpy())
        res.append((pb, f[:, 0]))
    return res
with torch.no_grad():
    run_over_images(model, dicts, DetrDatasetMapper(cfg, is_train=False), feats, batch_size=4, what="features")
ids = sorted(rows)
np.savez(out, ids=np.array(ids), **{f"boxes_{i}": rows[i][0] for i in ids}, **{f"f_{i}": rows[i][1] for i in ids},
         **{f"qb_{i}": rows[i][2] for i in ids}, **{f"qo_{i}": rows[i][3] for i in ids},
         **{f"s0_{i}": v0.get(i)[1] for i in ids})
print("wrote", out, len(ids), "images")
