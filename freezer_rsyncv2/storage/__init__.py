"""Storages with Freezer's storage interface."""
