"""Plumbing every layer uses: atomic files and folders, argument validation, progress bars, interrupts."""
