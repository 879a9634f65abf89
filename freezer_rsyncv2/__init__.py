"""freezer_rsyncv2: an rsync-algorithm incremental backup engine for OpenStack Freezer."""

__version__ = "0.1.0"
