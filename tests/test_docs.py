"""The documentation a user gets: every file the README, docs/ and the
code point at is in the repository (they used to cite PED_SPEC.md and
DESIGN.md, which were not)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [p for folder in ("ped_fast", "kernels", "csrc", "bench", "tests")
           for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".h", ".cpp", ".cu", ".sh")]


def test_markdown_links_resolve():
    missing = []
    for page in MARKDOWN:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_code_cites_only_documents_that_ship():
    cited = {}
    for path in SOURCES + MARKDOWN:
        if path.name == "test_docs.py":
            continue
        for name in re.findall(r"\b(?:docs/)?([A-Za-z_]+\.md)\b", path.read_text(errors="replace")):
            if not ((ROOT / "docs" / name).exists() or (ROOT / name).exists()):
                cited.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not cited, cited
