"""Hardware: the GPU and system catalog, and the planner that fits jobs onto it."""
