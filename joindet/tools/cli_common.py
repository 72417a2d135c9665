"""Command-line pieces shared by the bank tools (eval_priors, compare_targets, prior_evolution)."""
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.clutter import register_clutter
from ..data.datasets import check_dataset_names
from ..data.generated import GENERATED_SET_DEFAULTS
from ..data.synthetic import register_synthetic
from ..priors.bank import PriorBank

__all__ = ["add_synthetic_args", "labelled_dicts", "parse_versions", "register_builtin_from_args",
           "register_synthetic_from_args"]


def add_synthetic_args(parser):
    """The synthetic-set options (they must match the run that wrote the bank)."""
    synth = parser.add_argument_group("synthetic dataset (must match the run that wrote the bank)")
    synth.add_argument("--synthetic-root", default="", help="cache folder ('' = the default cache)")
    for key, what in (("num_train", "images in synth_train"), ("num_val", "images in synth_val"),
                      ("image_size", "side of the synthetic images"), ("seed", "synthetic generator seed")):
        synth.add_argument(f"--synthetic-{key.replace('_', '-')}", type=int, default=GENERATED_SET_DEFAULTS[key],
                           help=what)
    return parser


def register_synthetic_from_args(args):
    register_synthetic(name_prefix="synth", root=args.synthetic_root or None, num_train=args.synthetic_num_train,
                       num_val=args.synthetic_num_val, image_size=args.synthetic_image_size, seed=args.synthetic_seed)


def register_builtin_from_args(args):
    """The synthetic sets with the ``--synthetic-*`` sizes, and the clutter domain's at their defaults (kept
    when this process registered them already)."""
    register_synthetic_from_args(args)
    if "clutter_train" not in DatasetCatalog.list():
        register_clutter()


def labelled_dicts(name: str) -> List[dict]:
    """The dicts of a registered dataset that has boxes; an unlabelled view's error names its labelled one."""
    check_dataset_names([name], "--dataset")
    dicts = DatasetCatalog.get(name)
    if not any("annotations" in d for d in dicts):
        labelled = MetadataCatalog.get(name).get("labeled_dataset")
        hint = f"; use its labelled counterpart '{labelled}'" if labelled else ""
        raise ValueError(f"dataset '{name}' has no annotations, so priors cannot be scored against it{hint}")
    return dicts


def parse_versions(values: Sequence[str], bank: PriorBank) -> List[int]:
    """``--versions`` (integers, -1 = the latest, or ``all``) checked against the bank's complete versions."""
    present = bank.versions()
    if not present:
        raise ValueError(f"prior bank {bank.root} holds no complete version")
    if [v.lower() for v in values] == ["all"]:
        return present
    try:
        versions = [present[-1] if int(v) == -1 else int(v) for v in values]
    except ValueError:
        raise ValueError(f"--versions takes integers or 'all', got {list(values)}") from None
    absent = [v for v in versions if v not in present]
    if absent:
        raise ValueError(f"version(s) {absent} not in prior bank {bank.root} (present: {present})")
    return versions
