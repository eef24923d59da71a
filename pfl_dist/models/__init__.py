"""Models as pure functions of a flat, client-stacked parameter matrix w of shape (k, P)."""
