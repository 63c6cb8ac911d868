"""Build half of the toy world: data, captions, training and the asset build pipeline."""
