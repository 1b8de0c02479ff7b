from __future__ import annotations

import pytest

from connectors.knowledge import CsvLoader, LoadError, load_path

FAQ = """id,question,answer,category,owner,row
faq-1,How do I block my card?,Call us or use the app.,cards,,x
faq-2,What are the fees?,,fees,ops,
,Where is my branch?,See the branch finder.,branches,,
faq-1,Duplicate?,Another answer.,misc,,
faq-4,"Multi
line question",Yes.,misc,,
faq-5,Too,many,cells,a,b,c

"""


def test_one_document_per_row_with_extra_columns_as_metadata(tmp_path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text("question,answer,category,notes\nHow do I block my card?,Call us.,cards,\n")
    (doc,) = CsvLoader().load(path).documents
    assert doc.text == "Call us."
    assert doc.title == "faq"  # no title column given
    # empty cells are not metadata; the question is, since it is not the title column here
    assert doc.metadata == {"question": "How do I block my card?", "category": "cards", "row": 2}
    assert (doc.key, doc.doc_id, doc.kind) == ("row 2", None, "csv")


def test_title_and_id_columns_and_rejected_rows(tmp_path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(FAQ)
    loaded = CsvLoader(title_column="question", id_column="id").load(path)
    docs = loaded.documents
    assert [(d.doc_id, d.title) for d in docs] == [
        ("faq-1", "How do I block my card?"),
        ("faq-4", "Multi\nline question"),
    ]
    # a column named like a reserved key is kept under another name
    assert docs[0].metadata == {"category": "cards", "row_field": "x", "row": 2}
    # rows are numbered as in a spreadsheet (header = row 1, a quoted newline stays one row)
    where = path.as_posix()
    assert loaded.rejected == [
        (f"{where} row 3", "empty text column 'answer'"),
        (f"{where} row 4", "empty id column 'id'"),
        (f"{where} row 5", "id 'faq-1' already used on row 2"),
        (f"{where} row 7", "has 7 cells but the header has 6"),
    ]


def test_text_column_option(tmp_path) -> None:
    path = tmp_path / "kb.csv"
    path.write_text("q,reply\nHours?,9 to 5\n")
    result = load_path(path, text_column="reply", title_column="q")
    (doc,) = result.documents
    assert (doc.text, doc.metadata["title"], doc.metadata["row"]) == ("9 to 5", "Hours?", 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "has no text column 'answer'; columns present: 'q', 'reply'"),
        ({"text_column": "reply", "title_column": "title"}, "has no title column 'title'"),
        ({"text_column": "reply", "id_column": "id"}, "has no id column 'id'; columns present: 'q', 'reply'"),
    ],
)
def test_missing_column_names_file_column_and_columns_present(tmp_path, options, message) -> None:
    path = tmp_path / "kb.csv"
    path.write_text("q,reply\nHours?,9 to 5\n")
    with pytest.raises(LoadError, match=rf"kb\.csv: {message}"):
        load_path(path, **options)


def test_empty_csv_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(LoadError, match=r"empty\.csv: is empty: expected a header row"):
        CsvLoader().load(path)


def test_cp1252_csv(tmp_path) -> None:
    path = tmp_path / "win.csv"
    path.write_bytes("answer,question\nCo\u00fbt: 5 \u20ac,Frais?\n".encode("cp1252"))
    (doc,) = CsvLoader().load(path).documents
    assert doc.text == "Coût: 5 €"
    assert doc.metadata["encoding"] == "cp1252"
