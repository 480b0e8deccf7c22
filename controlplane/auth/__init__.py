"""Bearer tokens with scopes (`tokens`), route guards (`guards`) and per-client rate limits (`ratelimit`)."""

from controlplane.auth.guards import Principal, principal_of, requires
from controlplane.auth.tokens import SCOPES, TokenSet, ensure_tokens

__all__ = ["SCOPES", "Principal", "TokenSet", "ensure_tokens", "principal_of", "requires"]
