"""Training: the generative prior (``prior``), and later identities. Losses in ``losses``."""
