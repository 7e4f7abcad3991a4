from custode.git.configfile import is_true, parse


def test_parse_sections_subsections_quotes_comments() -> None:
    text = """# comment
[core]
\trepositoryformatversion = 1
\tbare = true ; trailing comment
\tfsmonitor
[extensions]
\tobjectFormat = sha256
[remote "Origin"]
\turl = "a;b#c" # comment
[Core] bare = false
"""
    values = parse(text)
    assert values["core.repositoryformatversion"] == "1"
    assert values["core.bare"] == "false"  # last one wins, section names are case-insensitive
    assert values["core.fsmonitor"] == "true"  # a bare key means true
    assert values["extensions.objectformat"] == "sha256"
    assert values["remote.Origin.url"] == "a;b#c"


def test_garbage_is_ignored() -> None:
    assert parse("not a config\n[broken\n=x\n") == {}


def test_is_true() -> None:
    assert is_true("TRUE") and is_true("yes") and is_true("1")
    assert not is_true("false") and not is_true(None)
