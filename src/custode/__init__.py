"""custode keeps a fleet of git repositories healthy.

The package is layered: ``discovery`` finds repositories under roots, ``repostate``
reads each one's cheap facts from the filesystem, ``health`` turns those facts into a
verdict with reasons, ``git`` is the single hardened way to run git, ``state`` and
``audit`` keep history and an append-only record of actions. ``cli`` is a thin layer
on top: it parses, calls the core and renders; the core never prints and never exits.
"""

__version__ = "0.1.0"
