"""Phase 1: attention and every RMSNorm on the GPU (plan 1.2, 3.1); see engine.py."""
