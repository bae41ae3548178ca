"""The documentation and the result records agree with the code: citations resolve, tables are regenerated.

Pure text checks (no JAX computation): every ``PHYSICS.md §n`` / ``DATA.md §n`` (and the older name ``PETS.md``) cited
in jaxed/, tests/ and experiments/ names a section heading that exists in docs/; the tables of docs/RESULTS.md, the
README's results block and the generated parts of experiments/results/*.md equal what experiments/summarize.py
builds from the JSON records.
"""
import re
import subprocess
import sys

import pytest

from conftest import ROOT

DOCS = ROOT / "docs"
#: cited name → file in docs/ that carries its sections (PETS.md was DATA.md's earlier name).
CITED = {"PHYSICS": "PHYSICS.md", "PETS": "DATA.md", "DATA": "DATA.md"}
_NUM = r"\d+(?:\.\d+)*"
# "PHYSICS.md §4.5, T6", "PHYSICS.md §0, §1", "PHYSICS.md §4.3–4.4", "PHYSICS.md\n    # §5.3", 'PHYSICS.md "Settled …"'
CITATION = re.compile(
    rf"\b(PHYSICS|PETS|DATA)\.md[\s#*`]*(?:(§\s?{_NUM}(?:\s*(?:,|–|-)\s*§?\s?{_NUM})*)(?:\s*,\s*(T\d+[a-z]?))?"
    rf"|\"([^\"\n]+)\")")
THIS = "test_records.py"  # its own examples of the pattern are not citations
HEADING = re.compile(rf"^#{{1,6}}\s+(?:({_NUM})\.?\s+)?(.*)$", re.M)


def _citations():
    """(file, cited doc, section numbers, test label or None, quoted title or None) for every citation."""
    out = []
    for folder in ("jaxed", "tests", "experiments"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".toml", ".ipynb") or not path.is_file() or path.name == THIS:
                continue
            for m in CITATION.finditer(path.read_text(encoding="utf-8")):
                name, sections, label, title = m.groups()
                numbers = []
                if sections:  # "§4–6" → 4 and 6; "§4.3–4.4" → 4.3 and 4.4
                    numbers = re.findall(_NUM, sections)
                out.append((path.relative_to(ROOT).as_posix(), CITED[name], numbers, label, title))
    return out


def _headings(doc: str) -> tuple[set, list]:
    text = (DOCS / doc).read_text(encoding="utf-8")
    numbers, titles = set(), []
    for m in HEADING.finditer(text):
        if m.group(1):
            numbers.add(m.group(1))
        titles.append(m.group(2).strip())
    return numbers, titles


def test_citation_pattern_reads_the_forms_the_code_uses():
    # The scanner itself, on the forms found in the code (a scanner that matched nothing would pass vacuously).
    text = ('(PHYSICS.md §4.5, T6) (docs/PHYSICS.md §4.3–4.4) (PHYSICS.md §0, §1) (PHYSICS.md\n    # §5.3) '
            '(docs/PETS.md, PHYSICS.md "Settled for jaxed") (PHYSICS.md §4–6)')
    found = [(m.group(1), re.findall(_NUM, m.group(2) or ""), m.group(3), m.group(4)) for m in CITATION.finditer(text)]
    assert found == [("PHYSICS", ["4.5"], "T6", None), ("PHYSICS", ["4.3", "4.4"], None, None),
                     ("PHYSICS", ["0", "1"], None, None), ("PHYSICS", ["5.3"], None, None),
                     ("PHYSICS", [], None, "Settled for jaxed"), ("PHYSICS", ["4", "6"], None, None)]


def test_doc_citations_resolve():
    cites = _citations()
    # the code cites the formulary ≈ 80 times; far fewer means the scanner broke, not that the citations went away
    assert sum(1 for c in cites if c[2] or c[4]) >= 60, len(cites)
    headings = {doc: _headings(doc) for doc in set(CITED.values())}
    missing = []
    for where, doc, numbers, label, title in cites:
        have, titles = headings[doc]
        missing += [f"{where}: {doc} §{n}" for n in numbers if n not in have]
        if label and not re.search(rf"\b{label}\b", (DOCS / doc).read_text(encoding="utf-8")):
            missing.append(f"{where}: {doc} check {label}")
        if title and not any(title.lower() in t.lower() for t in titles):
            missing.append(f'{where}: {doc} "{title}"')
    assert not missing, "cited sections absent from docs/:\n" + "\n".join(sorted(set(missing)))


def test_summarize_check_passes():
    # The committed tables equal the ones regenerated from the JSON records (experiments/summarize.py --check).
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "summarize.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("limit_bytes", [1_000_000])
def test_no_record_file_over_a_megabyte(limit_bytes):
    big = [p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments" / "results").rglob("*")
           if p.is_file() and p.stat().st_size > limit_bytes]
    assert not big, big
