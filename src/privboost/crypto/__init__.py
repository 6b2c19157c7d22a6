"""Thin wrappers over cryptographic primitives (Paillier, OPE/ORE, PRFs); no protocol logic lives here."""
