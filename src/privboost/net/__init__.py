"""Transport: TLS certificates and framed connections shared by the parts of privboost."""
