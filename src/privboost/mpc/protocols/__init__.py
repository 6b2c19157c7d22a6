"""MPC protocols over `privboost.mpc.runtime.Party`; every function is vectorised over whole share arrays.

Each module's docstring names the published construction it implements and what each party (and the dealer)
learns. Unless said otherwise, values are arithmetic shares (uint64 arrays) and fixed-point values use the
party's ``frac_bits``.
"""
