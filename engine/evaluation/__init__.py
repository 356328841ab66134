"""Evaluation: clip loading, FVD runs, continuation quality per s, AR-VAE reconstruction, reports and plots."""
