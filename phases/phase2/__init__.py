"""Phase 2 (plan 1.1): MoE expert batching on top of phase 1. See engine.py."""
