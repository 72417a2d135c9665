"""Object priors: generation, smoothing (Box Smooth Module) and the on-disk prior bank."""
