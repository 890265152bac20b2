"""python -m optimized with Kernels.attn_variant forced: fwd_ab.py VARIANT [optimized CLI args...]"""
import sys
import optimized.kernels as km
VARIANT = sys.argv[1]
_init = km.Kernels.__init__
def _forced(self, *a, **kw):
    _init(self, *a, **kw)
    self.attn_variant = VARIANT
km.Kernels.__init__ = _forced
from optimized.__main__ import main
print(f"== attn_variant {VARIANT}", flush=True)
sys.exit(main(sys.argv[2:]))
