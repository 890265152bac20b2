"""Phase 3 (plan 2.1 and 2.3): the ShortConv block on the GPU with one fused kernel between its
two projections, and the embedding lookup as a GPU gather."""
