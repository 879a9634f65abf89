"""The rsync algorithm: rolling hash, signatures, matcher and patcher; pure functions, no I/O."""
