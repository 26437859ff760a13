"""Hooks into training frameworks (import the one you use; each needs its framework installed)."""
