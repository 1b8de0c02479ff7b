from __future__ import annotations

from connectors.knowledge import HtmlLoader

PAGE = """<!doctype html>
<html><head><title>Bank help</title><style>body { color: red }</style>
<script>var tracking = "do not index";</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/cards">Cards</a></nav>
<p>Welcome to the <b>help</b> centre.</p>
<h1>Cards</h1>
<div><h2>Lost card</h2><p>Call us at once.</p><p>We block the card.</p></div>
<h2>Fees</h2>
<h3>Abroad</h3><ul><li>No fee in the euro area</li><li>2% elsewhere</li></ul>
<h4>Small print</h4><p>Rates change.</p>
<script>alert("x")</script>
</body></html>
"""


def test_sections_by_h1_to_h3_without_nav_script_style(tmp_path) -> None:
    path = tmp_path / "help.html"
    path.write_text(PAGE)
    docs = HtmlLoader().load(path).documents
    assert [d.section for d in docs] == ["", "Cards > Lost card", "Cards > Fees > Abroad"]
    assert docs[0].text == "Welcome to the help centre."  # inline <b> stays in its sentence
    assert docs[1].text == "Lost card\nCall us at once.\nWe block the card."
    assert docs[2].text == "Abroad\nNo fee in the euro area\n2% elsewhere\nSmall print\nRates change."
    everything = " ".join(d.text for d in docs)
    for dropped in ("tracking", "alert", "color", "Home", "Bank help"):
        assert dropped not in everything
    assert {d.title for d in docs} == {"Bank help"}
    assert docs[0].kind == "html"


def test_title_from_first_h1_else_stem(tmp_path) -> None:
    (tmp_path / "a.htm").write_text("<p>intro</p><h2>x</h2><p>y</p><h1>Main</h1><p>z</p>")
    (tmp_path / "b.html").write_text("<p>only text</p>")
    assert HtmlLoader().load(tmp_path / "a.htm").documents[0].title == "Main"
    assert HtmlLoader().load(tmp_path / "b.html").documents[0].title == "b"
