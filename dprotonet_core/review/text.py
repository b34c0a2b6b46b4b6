"""Text that comes from a checkpoint's card (or names a checkpoint folder) shown as itself, never as markdown.

Streamlit renders markdown in st.markdown, captions, headers, radio labels and progress texts: a card field holding
`![](http://...)` would load a remote image in every visitor's browser, `<...>` or `[text](url)` would make a
link, `$...$` a formula. `plain` backslash-escapes every character that starts such a construct (CommonMark lets
any ASCII punctuation be escaped, and the escape shows the character itself) and folds line breaks into spaces, so
a value cannot start a heading, a list or a block of its own.
"""

from __future__ import annotations

from typing import Any

MARKDOWN_SPECIALS = "\\`*_{}[]<>#!|~$"
_TABLE = str.maketrans({c: "\\" + c for c in MARKDOWN_SPECIALS})


def plain(value: Any) -> str:
    """`value` as text that markdown shows literally, on one line."""
    return " ".join(str(value).split()).translate(_TABLE)


def unescaped(text: str) -> str:
    """Markdown `text` with its backslash escapes resolved: the characters a reader sees."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in MARKDOWN_SPECIALS:
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)
