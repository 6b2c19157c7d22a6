"""Secure XGBoost training on secret-shared data (XORBoost-style): binning, the oblivious trainer, the analyst."""
