"""Contracts: the rules about Leyline messages (envelope, signing, keys, nonces, kinds, config)."""

from contracts.config import KasminaConfig
from contracts.envelope import Envelope, Signer, mac_input, unpack
from contracts.errors import ContractError, Reason, Refused
from contracts.ids import new_id
from contracts.keys import Key, KeyRing, KeyRingError
from contracts.nonce import MemoryNonceGuard, NonceGuard
from contracts.registry import REGISTRY, Registry
from contracts.verifier import Verifier

__all__ = [
    "REGISTRY",
    "ContractError",
    "Envelope",
    "KasminaConfig",
    "Key",
    "KeyRing",
    "KeyRingError",
    "MemoryNonceGuard",
    "NonceGuard",
    "Reason",
    "Refused",
    "Registry",
    "Signer",
    "Verifier",
    "mac_input",
    "new_id",
    "unpack",
]
