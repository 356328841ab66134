"""The fast backends: the one-frame DiT step as one graph, compiled by torch.compile or exported and run."""
