"""Training tools. ``regressor``: the Fast-GANFit encoder (paper 4). The texture trainers still
live in ``ganfit.texture`` (DESIGN.md: they move here when work passes through them)."""
