"""The control plane's bundles: compile, sign and activate revisions, and serve them to OPA agents.

The bundle format itself (archive, hashing, keys, signing, verification) is `bridge.opabundle`."""
