"""The README and docs/ point only at things that exist.

Every relative link in README.md and docs/*.md resolves (its file, and its #anchor to a heading of
that file), every repository path they name (`benchmarks/results/...`, `tests/...`, `conf/...`;
`{a,b}` and `*` patterns expanded) exists, every docs page is one click from the README, and the
README's first bash block holds the two commands `.ci/run` runs. Reads files only, in a second.

    pytest tests/test_docs.py -q
"""

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
# A path into the repository as the docs name it, in prose or in a command.
REPO_PATH = re.compile(r"(?<![\w/.$-])(?:benchmarks|tests|conf|scripts|sweeps|src|docs)/[\w.{},*/-]*")


def prose(text: str) -> str:
    """The text without its fenced code blocks (where `#` starts a comment, not a heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to dashes, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def expand(pattern: str) -> list[str]:
    """Shell brace expansion, one `{a,b}` group at a time: `x{,_2}.json` -> `x.json`, `x_2.json`."""
    group = re.search(r"\{([^{}]*)\}", pattern)
    if not group:
        return [pattern]
    return [
        p
        for choice in group.group(1).split(",")
        for p in expand(pattern[: group.start()] + choice + pattern[group.end() :])
    ]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_repository_paths_exist(page):
    missing = []
    for named in REPO_PATH.findall(page.read_text()):
        named = named.rstrip(".,")
        for path in expand(named):
            if not glob.glob(str(ROOT / path)):
                missing.append(path if path == named else f"{path} (from {named})")
    assert not missing, f"{page_id(page)} names paths that do not exist: " + ", ".join(missing)


def test_every_docs_page_is_one_click_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme)}
    unlinked = [page_id(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_first_bash_block_holds_the_two_ci_commands():
    # .ci/run takes the first ```bash block's lines that are neither empty nor comments.
    block = re.search(r"^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert "prepare.py" in commands[0] and "train.py" in commands[0] and "pytest" in commands[1]
