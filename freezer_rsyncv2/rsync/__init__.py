"""The rsync algorithm: rolling hash, signatures, matcher and patcher; pure functions, no I/O."""

from freezer_rsyncv2.rsync.matcher import COPY, LITERAL, MAX_LITERAL, Matcher, Op
from freezer_rsyncv2.rsync.patcher import copy_range, patch, plan
from freezer_rsyncv2.rsync.rollsum import block_weak_hashes, rolling_hashes, weak_hash
from freezer_rsyncv2.rsync.signature import (
    MAX_BLOCK,
    MIN_BLOCK,
    STRONG_LEN,
    Signature,
    SignatureBuilder,
    block_size_for,
    compute_signature,
    strong_hash,
)

__all__ = [
    "COPY",
    "LITERAL",
    "MAX_BLOCK",
    "MAX_LITERAL",
    "MIN_BLOCK",
    "STRONG_LEN",
    "Matcher",
    "Op",
    "Signature",
    "SignatureBuilder",
    "block_size_for",
    "block_weak_hashes",
    "compute_signature",
    "copy_range",
    "patch",
    "plan",
    "rolling_hashes",
    "strong_hash",
    "weak_hash",
]
