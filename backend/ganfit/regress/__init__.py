"""Fast-GANFit (paper section 4): a regression network that predicts every fitted parameter
in one forward pass. ``encoder`` holds the network, ``weights`` its shipped weights; training
lives in ``ganfit.train.regressor``."""

from .encoder import (EncoderConfig, EncoderInputs, EncoderOutput, RegressionEncoder, encoder_inputs,
                      inputs_from_targets, pool_identity)
from .weights import SHIPPED_REGRESSOR, load_regressor, regressor_provenance, save_regressor

__all__ = ["EncoderConfig", "EncoderInputs", "EncoderOutput", "RegressionEncoder", "SHIPPED_REGRESSOR",
           "encoder_inputs", "inputs_from_targets", "load_regressor", "pool_identity", "regressor_provenance",
           "save_regressor"]
