"""Backup engines: Freezer's workflow base class and the rsyncv2 engine."""
