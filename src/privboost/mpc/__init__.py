"""Secure two-party computation engine: 2 compute parties + a trusted dealer, over Z_2^64.

Security model (as XORBoost, Deforth et al., PoPETs 2022): two compute parties, each *semi-honest* (they follow the
protocol but may try to learn from what they see), that do not collude with each other; and a *trusted dealer* that
only hands out input-independent correlated randomness (Beaver triples, truncation pairs, AND triples, permutation
correlations). The dealer never receives data or opened values. It must not collude with either party: the dealer
knows every mask it hands out, so together with one party it could unmask the other.

Layout:
  ring.py        Z_2^64 arithmetic, fixed-point encoding, bit packing
  prg.py         AES-256-CTR pseudo-random generator (keys from `secrets`)
  shares.py      sharing and reconstruction of arithmetic (additive) and boolean (XOR) shares
  runtime.py     `Party`: party id, the channel to the peer, the correlation provider; opening values
  dealer.py      correlation-provider interface, the trusted dealer and its party-side client
  transport.py   framed channels: in-process (tests) and TCP + TLS 1.3 with mutual authentication
  kernels.py     numba kernels for mod-2^64 matrix products
  protocols/     the protocols (each module names its published construction and its leakage)

The dealer is reached only through `dealer.CorrelationProvider`, so a dealer-free offline phase (OT- or HE-based
triple generation) or a 3-party replicated mode can replace it without touching the protocols.
"""
