"""Maintenance: deciding what each repository needs (the planner) and doing it (the executor).

The package owns the ``[maintenance]`` policy and the planning of maintenance tasks:

* ``custode.config.maintenance``: ``MaintenancePolicy``, every threshold and age, each
  default with its source (git's ``gc --auto``/``git maintenance`` and Gitaly's
  housekeeping heuristics; see docs/maintenance-heuristics.md).
* ``needs``: what a repository needs and why, the policy's rules applied once; the
  planner turns each need into a task and ``health`` reports each as "attention", so
  the status verdict and the plan never disagree.
* ``planner``: ``plan(state, policy, git, now)``, a pure function from a ``RepoState`` to a
  ``Plan``: the tasks in execution order, each with a reason carrying its numbers, or why
  the repository is left alone. It runs no git and touches no file, so ``--dry-run`` is
  the plan itself and property-based tests can explore it.
* ``doubt``: which repositories are in doubt (their last recorded check was not clean);
  the planner gives them no task.
* ``borrowers``: every borrower of each repository (a sweep of every root, excluded
  directories too, and the borrowers remembered), and why custode cannot be sure.

Design: heuristics, not schedules. A repository is only touched when a threshold is
crossed; an optimised repository gets an empty plan. Safety is decided here, in the
open: a broken repository, or one whose last check was not clean, gets no task; a
repository others borrow objects from (or may: custode cannot always be sure) never gets a
task that can drop an object; stale files are listed with the mtime the plan saw,
so the executor can leave any file a running git has touched since.
"""
