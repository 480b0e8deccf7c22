"""Which key signs this control plane's bundles: configured (env/file) or generated once into the state dir."""

from __future__ import annotations

import logging

from bridge.kernel.config import Settings, SigningSettings
from bridge.opabundle.keys import SigningKey, generate_keypair, load_signing_key, write_keypair

log = logging.getLogger(__name__)


def ensure_signing_key(settings: Settings) -> SigningKey:
    """$GROQPOLICY_SIGNING_KEY / _FILE when set; else `<state>/keys/<kid>.pem`, created on first use."""
    if SigningSettings.from_env().key_pem or settings.signing_key_file:
        return load_signing_key(settings.signing_key_file, kid=settings.signing_kid)
    key_dir = settings.state_dir / "keys"
    private_path = key_dir / f"{settings.signing_kid}.pem"
    if private_path.is_file():
        return load_signing_key(private_path, kid=settings.signing_kid)
    key = generate_keypair(alg=settings.signing_alg, kid=settings.signing_kid)
    write_keypair(key, key_dir)
    log.warning("generated a new %s signing key %r in %s", key.alg, key.kid, key_dir)
    return key
