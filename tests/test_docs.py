"""The README and docs/ keep their promises: short README, links that resolve, pages that say what they
answer, code that runs, and durations that agree with the committed reports' measured ones."""

import json
import re
from pathlib import Path

import pytest

from patchlab.study import reproduce

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
MEASURED = ("default", "long", "digits")  # profiles with a committed report whose duration was measured
DURATION = re.compile(r"about (\d+(?:\.\d+)?) ?(minutes|minute|min|hours|hour|h)\b")
NAMES = "default|long|smoke|paper|demo|digits|digits_smoke"
PROFILE = re.compile(rf"`({NAMES})`|--profile ({NAMES})\b|\b({NAMES}) profile|make (reproduce|reports)\b")


def _words(text: str) -> int:
    return len(re.findall(r"\S+", text))


def test_the_readme_is_short_and_the_docs_hold_the_rest():
    assert _words((ROOT / "README.md").read_text()) <= 1600
    names = {p.name for p in DOCS}
    for page in ("method", "notebooks", "memory", "cli", "distributed", "speed", "api", "seam-remedies", "metrics",
                 "data", "tests"):
        assert f"{page}.md" in names, page


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_each_page_starts_with_what_it_answers(page):
    blocks = [b.strip() for b in page.read_text().split("\n\n") if b.strip()]
    assert blocks[0].startswith("# ") and "\n" not in blocks[0], "a page opens with its title"
    first = blocks[1]
    assert not first.startswith(("#", "|", "```", "-")) and _words(first) >= 8, \
        f"{page.name}: the title is followed by a sentence or two on what the page answers"


def _links(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+://|#|mailto:", target):
            yield target.split("#")[0]


@pytest.mark.parametrize("path", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path):
    missing = [t for t in _links(path) if t and not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readmes_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def _minutes(value: str, unit: str) -> float:
    return float(value) * (60 if unit.startswith("h") else 1)


def _statements():
    """(where, profile, notebook or None, stated minutes) for every 'about N minutes' that a profile's name
    precedes in its paragraph (table rows: its line): the README, docs/, the Makefile, the profiles'
    descriptions and the notebooks' markdown (there: the notebook's own time)."""
    texts = [(p.name, None, p.read_text()) for p in [ROOT / "README.md", *DOCS, ROOT / "Makefile"]]
    for profile in sorted((ROOT / "notebooks" / "params").glob("*.json")):
        description = json.loads(profile.read_text()).get("description", "")
        texts.append((profile.name, None, f"the {profile.stem} profile: {description}"))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        prose = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        texts.append((nb.name, nb.stem, prose))
    for where, notebook, text in texts:
        for block in re.split(r"\n\s*\n", text):
            for piece in block.splitlines() if block.lstrip().startswith("|") else [block]:
                for match in DURATION.finditer(piece):
                    named = [next(g for g in m.groups() if g) for m in PROFILE.finditer(piece[:match.start()])]
                    if named:
                        profile = {"reproduce": "default", "reports": "default"}.get(named[-1], named[-1])
                        yield where, profile, notebook, _minutes(*match.groups())


def test_stated_durations_agree_with_the_measured_ones():
    """A profile's stated duration is within 2x of its last from-scratch reproduction
    (reports/<profile>/notebooks/reproduction.json); a notebook's, within 2x of that notebook's time."""
    checked, wrong = 0, []
    for where, profile, notebook, stated in _statements():
        path = ROOT / "reports" / profile / "notebooks" / reproduce.DURATION
        if profile not in MEASURED or not path.is_file():  # no from-scratch measurement committed yet
            continue
        record = json.loads(path.read_text())["from_scratch"]
        measured = record["notebooks_s"][notebook] / 60 if notebook else record["minutes"]
        checked += 1
        if not measured / 2 <= stated <= measured * 2:
            wrong.append(f"{where}: {profile}{' ' + notebook if notebook else ''} stated about {stated:g} min, "
                         f"measured {measured:.1f} min")
    assert checked >= 3 and not wrong, wrong
