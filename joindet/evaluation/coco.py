"""Which COCOeval Detectron2's ``COCOEvaluator`` can use here (for the yacs trainer and the LazyConfigs)."""

__all__ = ["has_compiled_ops"]


def has_compiled_ops():
    """Whether Detectron2's compiled ``_C`` loads (it does not for the py3.10 wheel on 3.11): the C++ COCOeval
    (``COCOEvaluator(use_fast_impl=True)``) comes with it; without it, pycocotools' own."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True
