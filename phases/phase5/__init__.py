"""Phase 5 (plan 3.2 and 4.1-4.3): many prompts per model forward with exact right-padding,
one weight reader per node, gathered outputs, and experts split over a node's ranks by load."""
