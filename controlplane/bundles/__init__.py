"""Bundles: archive, canonical hashing, signing, verification, keys, compiler, revisions, serving."""
