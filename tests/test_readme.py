"""README.md is the artists' page: short, its links all lead somewhere, the set-up commands on its first screen.
Developer material lives in docs/ (whose links are checked the same way)."""
from __future__ import annotations

import re
import tomllib
import urllib.parse
from pathlib import Path

import pytest

from conftest import PACK_ROOT

README = PACK_ROOT / "README.md"
PAGES = [README, *sorted((PACK_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MAX_BYTES = 12288


def links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands, not links
    return LINK.findall(re.sub(r"`[^`\n]*`", "", text))


def slugs(md: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown text."""
    out = set()
    for h in re.findall(r"^#+\s+(.+?)\s*$", re.sub(r"```.*?```", "", md, flags=re.S), flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-"))
    return out


def test_readme_is_short():
    assert README.stat().st_size <= MAX_BYTES, f"README.md is {README.stat().st_size} bytes: move detail to docs/"


def test_first_screen_has_the_install_run_and_test_commands():
    first = "\n".join(README.read_text().splitlines()[:25])
    assert "git clone" in first and "pip install -r ComfyUI-DPIR/requirements.txt" in first
    assert re.search(r"cli\.py \S+\.(jpg|png) -o ", first) and "python -m pytest -q" in first


def test_clone_url_is_the_registry_repository():
    repo = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert f"git clone {repo} " in README.read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PACK_ROOT)))
def test_every_link_resolves(page: Path):
    found = links(page.read_text())
    assert found or page != README
    for target in found:
        url = urllib.parse.urlsplit(target)
        if url.scheme:
            assert url.scheme == "https" and re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", url.netloc), target
            assert not re.search(r"[\s<>\"{}|\\^`]", target), target
            continue
        assert not url.netloc, target
        path = (page.parent / urllib.parse.unquote(url.path)).resolve() if url.path else page
        assert path.is_relative_to(PACK_ROOT) and path.exists(), f"{page.name}: {target} is not a file of the repo"
        if url.fragment:
            assert path.suffix == ".md" and url.fragment in slugs(path.read_text()), f"{page.name}: {target}"


def test_the_link_check_sees_links():
    """The checks above read these forms (an image, a titled link, a relative link with an anchor, code ignored)."""
    text = "![a](x.png) [b](https://example.org/p \"t\") [c](docs/u.md#x-y) `[d](nope)`\n```\n[e](nope)\n```"
    assert links(text) == ["x.png", "https://example.org/p", "docs/u.md#x-y"]
    assert slugs("## Restore many photos (command line)\n") == {"restore-many-photos-command-line"}
