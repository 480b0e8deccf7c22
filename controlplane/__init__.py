"""groqpolicy control plane: policies, compiler, signer, bundle server, evaluation API."""
