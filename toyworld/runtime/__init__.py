"""Run-time half of the toy world: asset config, text encoder, reward loader."""
