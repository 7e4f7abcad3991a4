"""What the git runner allows: the ``-c`` options on every call and the subcommand allowlist.

Filters, textconv and diff drivers are named per driver in a repository's config and cannot
be switched off wholesale, so custode runs only git commands that never run them without a
work tree, minus the options that would (``log -p``...). Aliases cannot shadow builtins.
``check`` returns the rule for a command line or raises GitRefusedError saying why not.

No transport at all: custode never clones, fetches or lists a remote (a restore copies
packs), so no transfer command is allowed and every protocol is refused, the local one
too. That matters beyond transfers: in a partial clone, any command that meets a missing
object (``rev-list``, ``pack-objects``, ``cat-file``...) starts ``git fetch`` from the
promisor remote, and that remote's config (``uploadpack``, ``vcs``, a ``url.*`` rewrite,
an included file) names the program the transport runs. The fetch inherits our ``-c``
options and environment, so it dies at the protocol check instead, before any program
starts, and the command fails: the repository is reported, never repaired by fetching.
A repository's ``protocol.<name>.allow`` outranks our ``protocol.allow`` (git reads the
per-protocol key first, whoever set it), so the runner also sets ``GIT_ALLOW_PROTOCOL``,
which overrides all such config (``custode.git.runner``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from custode.errors import GitRefusedError

#: ``-c`` options on every command line; command-line config outranks the repository's.
HARDENING: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),  # no hook runs, whatever hooks dir the repo names
    ("core.fsmonitor", "false"),  # no fsmonitor hook or daemon when an index is read
    ("core.pager", "cat"),  # with --no-pager and GIT_PAGER=cat
    ("core.askPass", ""),  # empty: git skips askpass (GIT_ASKPASS is not passed on)
    ("core.sshCommand", "false"),  # ssh is refused by protocol.allow as well
    ("core.alternateRefsCommand", "true"),  # lists nothing: only an optimisation is lost
    ("credential.helper", ""),  # empty resets the list of helpers
    ("gpg.program", "false"),  # signature checks fail instead of running a program
    ("gpg.openpgp.program", "false"),
    ("gpg.ssh.program", "false"),
    ("gpg.x509.program", "false"),
    ("protocol.allow", "never"),  # no transport: not ext::, ssh, http or a remote helper...
    ("protocol.file.allow", "never"),  # ...nor the local one, which runs an uploadpack program
    ("gc.auto", "0"),  # no gc --auto (nor its pre-auto-gc hook) behind our back
    ("maintenance.auto", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("color.ui", "false"),  # output custode parses stays plain...
    ("log.showSignature", "false"),  # ...and free of signature checks
)

#: ``-c`` options for a git whose answer decides whether objects may be dropped or whether a
#: backup is complete: caches of the truth (commit-graph, reachability bitmaps, the
#: multi-pack-index) can lie, so such walks read the objects themselves. Pass as
#: ``Git.run(..., config=DISTRUST_DERIVED)``.
DISTRUST_DERIVED: tuple[tuple[str, str], ...] = (
    ("core.commitGraph", "false"),  # parents and trees from the commits, not the graph
    ("pack.useBitmaps", "false"),  # object lists from a walk, not from a .bitmap
    ("core.multiPackIndex", "false"),  # objects found through each pack's own .idx
)

STOP = ("--", "--end-of-options")  # what follows is paths or revisions, not options


@dataclass(frozen=True)
class Rule:
    why: str  # why this command cannot run a program the repository names
    actions: tuple[str, ...] = ()  # if any, the first argument must be one of them
    refuse: tuple[str, ...] = ()  # options refused (also with =value or an attached value)
    require: tuple[str, ...] = ()  # at least one of these options must be given


_DIFFS = (
    "-p", "-u", "--patch", "--patch-with-stat", "--patch-with-raw", "--stat", "--numstat",
    "--shortstat", "--dirstat", "--dirstat-by-file", "--cumulative", "--summary",
    "--compact-summary", "--cc", "-c", "-m", "--diff-merges", "--remerge-diff", "-W",
    "--function-context", "--word-diff", "--color-words", "--check", "--binary", "-S", "-G",
    "--pickaxe-regex", "-L", "--follow", "--textconv", "--ext-diff", "--show-signature",
)  # fmt: skip

#: The only git subcommands custode runs. None of them runs hooks (disabled anyway),
#: filters, textconv or diff drivers without a work tree; refused options are those that
#: would. No clone, fetch, ls-remote or push: custode never transfers objects.
ALLOWLIST: dict[str, Rule] = {
    "version": Rule("prints git's version"),
    "rev-parse": Rule("parses names and paths"),
    "for-each-ref": Rule("lists refs; signature atoms use the pinned gpg.program"),
    "show-ref": Rule("lists refs"),
    "symbolic-ref": Rule("reads or sets a symbolic ref (hooks disabled)"),
    "update-ref": Rule("updates refs (reference-transaction hook disabled)"),
    "count-objects": Rule("counts objects"),
    "rev-list": Rule("walks history without diffs", refuse=_DIFFS),
    "log": Rule("history without patches: diff/textconv/signature options refused",
                 refuse=_DIFFS),
    "cat-file": Rule("raw objects: --filters/--textconv refused",
                      refuse=("--filters", "--textconv", "--path")),
    "ls-tree": Rule("lists trees"),
    "hash-object": Rule("hashes without clean filters", require=("--no-filters",),
                         refuse=("--path",)),
    "fsck": Rule("checks objects"),
    "repack": Rule("runs pack-objects only"),
    "gc": Rule("repack/prune/reflog/pack-refs/commit-graph; pre-auto-gc hook disabled"),
    "prune": Rule("deletes unreachable loose objects"),
    "prune-packed": Rule("deletes loose objects already packed"),
    "pack-refs": Rule("packs refs"),
    "pack-objects": Rule("writes packs"),
    "unpack-objects": Rule("explodes a pack"),
    "index-pack": Rule("indexes a pack"),
    "verify-pack": Rule("checks a pack"),
    "show-index": Rule("reads a pack index"),
    "reflog": Rule("expires reflogs ('show' is log)", actions=("expire", "delete", "exists")),
    "commit-graph": Rule("writes/checks the commit-graph", actions=("write", "verify")),
    "multi-pack-index": Rule("writes/checks the midx",
                              actions=("write", "verify", "expire", "repack")),
    "worktree": Rule("prunes/lists worktree records, never checks out", actions=("prune", "list")),
    "bundle": Rule("rev-list/pack-objects/index-pack",
                    actions=("create", "verify", "list-heads", "unbundle")),
    "init": Rule("creates an empty repository"),
    "config": Rule("reads config, writes only to a named file", refuse=("--edit", "-e"),
                    require=("--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list",
                             "-l", "--file", "-f", "--blob")),
}  # fmt: skip


def _matches(arg: str, option: str) -> bool:
    if arg == option or arg.startswith(option + "="):
        return True
    return len(option) == 2 and not arg.startswith("--") and arg.startswith(option)


def check(args: Sequence[str]) -> Rule:
    """The allowlist rule for ``args``, or GitRefusedError saying why there is none."""
    sub = args[0] if args else ""

    def refuse(why: str, shown: str = " ".join(args[:2])) -> GitRefusedError:
        return GitRefusedError(f"refusing to run 'git {shown}': {why}", args=tuple(args))

    rule = ALLOWLIST.get(sub)
    if rule is None:
        raise refuse(
            "not on custode's allowlist of git commands that cannot run programs named by a "
            "repository (custode.git.policy.ALLOWLIST)"
        )
    if rule.actions and (len(args) < 2 or args[1] not in rule.actions):
        raise refuse(f"only 'git {sub}' {', '.join(rule.actions)} are allowed")
    options = list(itertools.takewhile(lambda arg: arg not in STOP, args[1:]))
    for arg in options:
        if any(_matches(arg, bad) for bad in rule.refuse):
            why = "that option can run a program named by the repository or reach the network"
            raise refuse(why, f"{sub} {arg}")
    if rule.require and not any(_matches(a, r) for a in options for r in rule.require):
        raise refuse(f"it needs one of {', '.join(rule.require)} ({rule.why})")
    return rule
