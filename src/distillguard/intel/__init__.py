"""Threat-intel sharing between providers: distillation campaigns as STIX 2.1 over TAXII 2.1.

Modules (each imported only where needed; ``distillguard intel --help`` loads no STIX library):

* ``fingerprint``: template keys, keyed fingerprints (HMAC under the trust group's key), MinHash (pure).
* ``census``: per-account template fingerprints, networks and timing over ledger rows.
* ``stix``: the STIX objects of a provider's campaigns (``stix2``), ATLAS references, TLP 2.0, and back.
* ``signing``: detached Ed25519 signatures with the installation's audit signing key.
* ``store``: the state dir's imported bundles and TAXII positions.
* ``match``: imported campaigns as weighted evidence in ``monitor scan``.
* ``taxii``: publish and incremental pull (``taxii2-client``).
* ``jobs``: export and import as library calls; ``cli``: ``distillguard intel ...``.
"""
