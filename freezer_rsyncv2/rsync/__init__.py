"""The rsync algorithm: rolling hash, signatures, matcher and patcher; pure functions, no I/O."""

from freezer_rsyncv2.rsync.matcher import COPY, HOLE, LITERAL, MAX_LITERAL, Matcher, Op
from freezer_rsyncv2.rsync.patcher import copy_range, patch, plan
from freezer_rsyncv2.rsync.rollsum import block_weak_hashes, rolling_hashes, weak_hash
from freezer_rsyncv2.rsync.sigdelta import MAX_RUN_BLOCKS, SigRun
from freezer_rsyncv2.rsync.signature import (
    MAX_AUTO_BLOCK,
    MAX_FILE_SIZE,
    MAX_FIXED_BLOCK,
    MIN_AUTO_BLOCK,
    MIN_FIXED_BLOCK,
    STRONG_LEN,
    Signature,
    SignatureBuilder,
    block_size_for,
    compute_signature,
    strong_hash,
)

__all__ = [
    "COPY",
    "HOLE",
    "LITERAL",
    "MAX_AUTO_BLOCK",
    "MAX_FILE_SIZE",
    "MAX_FIXED_BLOCK",
    "MAX_LITERAL",
    "MAX_RUN_BLOCKS",
    "MIN_AUTO_BLOCK",
    "MIN_FIXED_BLOCK",
    "STRONG_LEN",
    "Matcher",
    "Op",
    "SigRun",
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
