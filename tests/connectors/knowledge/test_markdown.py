from __future__ import annotations

import pytest

from connectors.knowledge import LoadError, MarkdownLoader

KB = """---
title: Card help
tags: [cards, support]
updated: 2024-05-01
source: intranet
---
Intro before any heading.

# Cards

## Lost card

Call us at once; we block the card.

```
# not a heading, inside a fence
```

## Fees

### Abroad

No fee in the euro area.

# Accounts

Open one online.
"""


def test_sections_follow_the_heading_path(tmp_path) -> None:
    path = tmp_path / "cards.md"
    path.write_text(KB)
    docs = MarkdownLoader().load(path).documents
    assert [d.section for d in docs] == ["", "Cards > Lost card", "Cards > Fees > Abroad", "Accounts"]
    assert docs[1].text.startswith("## Lost card\n\nCall us at once")
    assert "# not a heading, inside a fence" in docs[1].text  # the fence stays in its section
    assert docs[0].text == "Intro before any heading."
    assert {d.source for d in docs} == {path.as_posix()}
    assert [d.key for d in docs] == ["section 0", "section 1", "section 2", "section 3"]


def test_front_matter_goes_to_metadata_and_title(tmp_path) -> None:
    path = tmp_path / "cards.md"
    path.write_text(KB)
    doc = MarkdownLoader().load(path).documents[0]
    assert doc.title == "Card help"
    # dates become ISO strings; a key named like a reserved field is renamed, not lost
    assert doc.metadata == {
        "title_field": "Card help",
        "tags": ["cards", "support"],
        "updated": "2024-05-01",
        "source_field": "intranet",
    }


def test_title_is_first_h1_else_stem(tmp_path) -> None:
    (tmp_path / "a.md").write_text("Some text\n\n## Sub\n\nmore\n\n# Main\n\nbody\n")
    (tmp_path / "b.md").write_text("just text\n")
    assert MarkdownLoader().load(tmp_path / "a.md").documents[0].title == "Main"
    assert MarkdownLoader().load(tmp_path / "b.md").documents[0].title == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\ntitle: x\nno end\n", "front matter opened with '---' on line 1 is never closed"),
        ("---\n: [bad\n---\nbody\n", "front matter is not valid YAML"),
        ("---\n- a\n- b\n---\nbody\n", "front matter must be a YAML mapping, got list"),
    ],
)
def test_bad_front_matter_is_a_clear_error(tmp_path, text, message) -> None:
    path = tmp_path / "bad.md"
    path.write_text(text)
    with pytest.raises(LoadError, match=rf"bad\.md: {message}"):
        MarkdownLoader().load(path)
