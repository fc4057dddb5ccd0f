"""Fast-GANFit (paper section 4): a regression network that predicts every fitted parameter
in one forward pass. ``encoder`` holds the network; training lives in ``ganfit.train.regressor``."""

from .encoder import EncoderConfig, EncoderInputs, EncoderOutput, RegressionEncoder, encoder_inputs, pool_identity

__all__ = ["EncoderConfig", "EncoderInputs", "EncoderOutput", "RegressionEncoder", "encoder_inputs", "pool_identity"]
