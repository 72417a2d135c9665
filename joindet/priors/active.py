"""The prior-bank version the data loader serves, shared with data-loader worker processes."""
import multiprocessing as mp

from .bank import PriorBank

__all__ = ["ActivePriors"]


class ActivePriors:
    """Which bank version is the current supervision.

    The version number lives in shared memory (``multiprocessing.Value``), so data-loader workers
    forked before a refresh see the new version at their next sample; each process opens the
    version's memory maps lazily and re-opens them when the number changes.
    """

    def __init__(self, bank_root):
        self.bank = PriorBank(bank_root)
        self._version = mp.get_context("fork").Value("i", -1)
        self._cache = None

    @property
    def version(self):
        """The version in use (-1 before version 0 exists)."""
        return self._version.value

    def set_version(self, version):
        if version not in self.bank.versions():
            raise FileNotFoundError(f"prior bank {self.bank.root} has no complete version {version} "
                                    f"(it has {self.bank.versions()})")
        self._version.value = int(version)

    def current(self):
        """The ``PriorVersion`` in use (opened once per process and version)."""
        v = self.version
        if v < 0:
            raise RuntimeError(f"no prior version is active yet (bank {self.bank.root})")
        if self._cache is None or self._cache.version != v:
            self._cache = self.bank.read(v)
        return self._cache

    def get(self, image_id):
        """(boxes (k, 4) float32 XYXY in original image pixels, scores (k,)) of one image."""
        return self.current().get(image_id)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state
