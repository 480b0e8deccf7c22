"""OPA's bundle format (v1/bundle in Go): archives, file digests, keys, signing, verification, data.

Both sides of a bundle stand on it: the control plane builds and signs bundles, the in-process
evaluator and the agents' contract verify and read them. It imports nothing of the project but
`bridge.kernel`.
"""
