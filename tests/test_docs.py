"""The documentation: the MkDocs site in docs/ builds strictly (a broken link or anchor fails it),
every page is reachable from the nav, and the README's relative links point at files that exist."""
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_mkdocs_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for page in ("index.html", "getting-started/index.html", "measurements/index.html", "reports/demo/index.html",
                 "reports/demo_params.png", "datasets/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def _nav_files(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True and config["docs_dir"] == "docs"
    nav = set(_nav_files(config["nav"]))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages and pages <= nav, pages - nav
    for f in nav:
        assert (ROOT / "docs" / f).is_file(), f


def _slug(heading: str) -> str:
    """The anchor of a markdown heading, as MkDocs (and GitHub, for these headings) makes it."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text))


def test_readmes_relative_links_point_at_existing_files():
    links = [t for t in LINK.findall(README) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert len(links) >= 12  # the docs pages, the demo report, its plot, the data notes
    for target in links:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.is_file(), f"README.md links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+\s+(.*)$", file.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {target}: no such heading"
    for page in (ROOT / "docs").glob("*.md"):  # every page is linked from the README
        assert f"docs/{page.name}" in links or page.name == "index.md", page.name


def test_readme_is_short_and_keeps_no_dated_measurements_or_commits():
    assert len(README.splitlines()) <= 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "dated measurements belong in docs/measurements.md"
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", README) if re.search(r"[a-f]", w) and re.search(r"\d", w)]
    assert not hashes, f"commit hashes belong in docs/measurements.md: {hashes}"
