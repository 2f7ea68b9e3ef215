"""``dgtalker.invert`` is ``dgtalker.train.invert`` (inversion lives with the training
code); this name stays so that ``from dgtalker.invert import invert`` keeps working."""
import sys

from .train import invert as _invert

sys.modules[__name__] = _invert
