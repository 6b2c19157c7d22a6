"""Federated XGBoost for many sites: each site works on its own rows; only securely aggregated sums leave it.

Horizontal split (same features, different rows). Modules: `site` (a site's plaintext work), `aggregator` (tree
growth from summed histograms), `secagg` (SecAgg+ secure aggregation), `sketch` (global bin edges), `histograms`
and `splits` (XGBoost's hist method, exactly), `partition` (a site's rows kept grouped by tree node), `messages`
(the codec both transports share), `flower_app` (the Flower ServerApp/ClientApp), `direct` (sites as processes
over TLS, no Flower), `channel` (direct in-process calls for tests).
"""
