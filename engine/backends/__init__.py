"""The fast backends: the one-frame DiT step as one graph, compiled in-process or exported and run."""
