"""privboost: privacy-preserving XGBoost.

Three parts share one tree model (`privboost.model`): secure training on secret shares, federated training with
secure aggregation, and encrypted prediction (`privboost.inference`).
"""

from privboost.model import ModelFormatError, Tree, TreeEnsemble

__all__ = ["ModelFormatError", "Tree", "TreeEnsemble"]
__version__ = "0.1.0"
