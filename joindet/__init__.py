"""JoinDet: unsupervised pretraining of a whole Deformable DETR with self-generated object priors.

Importing the package registers its meta-architectures with Detectron2, and ``joindet://<name>``
(a config shipped in the package, see ``joindet.model_zoo``) with Detectron2's ``PathManager``.
"""
import warnings

# fvcore.nn.focal_loss and detectron2.modeling.box_regression apply torch.jit.script to two functions each when
# they are imported, and torch (>= 2.10) warns on every call that torch.jit.script is deprecated: a FutureWarning
# on the console of every process, which no user of theirs can act on (JoinDet itself never calls it). Silence
# exactly that message, while these two dependencies are imported; any other call still warns.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import fvcore.nn  # noqa: F401
    import detectron2.modeling.box_regression  # noqa: F401

from . import model_zoo  # noqa: E402,F401  (registers joindet:// config names)
from . import modeling  # noqa: E402,F401  (registers META_ARCH entries)
from .config import add_joindet_config  # noqa: E402

__all__ = ["add_joindet_config"]
