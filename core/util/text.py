"""Text that came from outside chipbench, made safe for where it is shown.

Run folders travel between machines and colleagues and plugins answer what they like, so every
text chipbench prints or writes that it read from a file (``result.json``, ``progress.json``,
``spec.json``, ``monitor/*.jsonl``, a config) or got from a plugin is untrusted. This module is the
one definition of how such text is shown:

- :func:`terminal`: one terminal line. Control characters (C0, ESC, CR, LF and TAB among them;
  DEL; C1), format characters (bidi overrides and isolates, zero-width characters), line and
  paragraph separators and lone surrogates are shown escaped as Python writes them (``\\x1b``,
  ``\\n``, ``\\u202e``): nothing reaches the terminal that colours it, moves the cursor, clears or
  retitles it, starts a line or reorders the text. Backslashes are left as they are, so text
  escaped once is unchanged by escaping it again.
- :func:`terminal_table`: rows aligned in columns for a terminal, each cell as :func:`terminal`.
- :func:`markdown_cell`: a Markdown table cell (also safe as inline text). Line breaks and tabs
  become spaces (a cell stays one row: no ``<br>``, so no forged line can appear in it either),
  the other controls are escaped as for the terminal, ``\\`` and ``|`` are backslash-escaped and
  ``<`` is ``&lt;``: a cell can neither add a row, shift the columns nor open an HTML tag.
- :func:`xml_text`: SVG/XML text and attribute values: line breaks and tabs become spaces, every
  other control or format character is removed (XML 1.0 forbids most of them), and ``& < > " '``
  are XML-escaped.
- :func:`shorten`: long text cut in the middle, keeping its start and its end and saying how many
  characters were cut. A number at either edge of the cut goes whole into the cut, never split.
- :func:`number_text` and :func:`shown`: numbers are never cut: an integer is written whole up to
  100 digits, a longer one by its magnitude and digit count; :func:`shown` is the ``repr`` of any
  value (a config value, a plugin's answer) bounded for an error line, its numbers whole.
"""

import math
import reprlib
import unicodedata
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple
from xml.sax.saxutils import escape as _xml_escape

UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
"""Unicode categories never shown as they are: controls, format characters (bidi, zero-width),
surrogates (which cannot even be encoded), line and paragraph separators."""
SPACED = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029")
"""Tabs and line breaks (what ``str.splitlines`` splits on): a space in Markdown and SVG."""
XML_NONCHARACTERS = frozenset("\ufffe\uffff")
"""Characters XML 1.0 forbids besides the controls and surrogates."""
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

VALUE_LIMIT = 200
"""Characters of one untrusted value in a line (a label, a setting, a field of result.json)."""
LINE_LIMIT = 4000
"""Characters of the problem, and of the fix, of one error line: the last bound, after each value
in it was cut to its own."""
CUT_MARK = "...({} characters cut)..."
NUMBER_CHARACTERS = frozenset("0123456789.")
LONGEST_NUMBER = 120
"""A run of digits longer than this at the edge of a cut is not taken for one number: cut there."""
WHOLE_DIGITS = 100
"""Integers of up to this many digits are written whole."""


def _str(value: Any) -> str:
    """``str(value)``, or a stand-in where even that raises (a plugin's object can be built to)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - whatever its __str__ raises
        return "<{} object>".format(type(value).__name__)


def _escape_char(ch: str) -> str:
    """``ch`` as Python writes it in a string literal: ``\\n``, ``\\x1b``, ``\\u202e``."""
    if ch in NAMED_ESCAPES:
        return NAMED_ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return "\\x{:02x}".format(code)
    if code < 0x10000:
        return "\\u{:04x}".format(code)
    return "\\U{:08x}".format(code)


def _replace_unsafe(text: str, replace: Callable[[str], str]) -> str:
    """``text`` with every character of :data:`UNSAFE_CATEGORIES` given to ``replace``."""
    if text.isprintable():  # the usual case, at C speed: nothing to replace
        return text
    return "".join(replace(ch) if unicodedata.category(ch) in UNSAFE_CATEGORIES else ch
                   for ch in text)


def _limited(value: Any, limit: Optional[int]) -> str:
    text = _str(value)
    return shorten(text, limit) if limit is not None else text


def terminal(value: Any, limit: Optional[int] = None) -> str:
    """``value`` as text for one terminal line: every control, format or separator character
    escaped (``\\x1b``, ``\\n``); cut to ``limit`` characters first where given."""
    return _replace_unsafe(_limited(value, limit), _escape_char)


def terminal_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str],
                   limit: int = VALUE_LIMIT, missing: str = "") -> str:
    """``rows`` as a table aligned for a terminal, a header of ``columns`` first: every header and
    cell through :func:`terminal` (cut to ``limit`` characters), so that no text of a file or a
    plugin's answer can leave its cell or its row; ``missing`` stands for a cell a row lacks."""
    table = [[terminal(c, limit) for c in columns]]
    table += [[terminal(row.get(c, missing), limit) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in table)


def markdown_cell(value: Any, limit: Optional[int] = None) -> str:
    """``value`` as one Markdown table cell (or inline text): line breaks and tabs as spaces, other
    controls escaped as :func:`terminal` does, ``\\`` and ``|`` backslash-escaped, ``<`` as
    ``&lt;``; cut to ``limit`` characters first where given."""
    text = _limited(value, limit).replace("\\", "\\\\")  # before the escapes add their own
    text = _replace_unsafe(text, lambda ch: " " if ch in SPACED else _escape_char(ch))
    return text.replace("|", "\\|").replace("<", "&lt;")


def xml_text(value: Any, limit: Optional[int] = None) -> str:
    """``value`` as SVG/XML text or attribute value: line breaks and tabs as spaces, other control
    and format characters removed, ``& < > " '`` escaped; cut to ``limit`` characters first where
    given."""
    text = _replace_unsafe(_limited(value, limit), lambda ch: " " if ch in SPACED else "")
    if "\ufffe" in text or "\uffff" in text:
        text = "".join(ch for ch in text if ch not in XML_NONCHARACTERS)
    return _xml_escape(text, {'"': "&quot;", "'": "&apos;"})


def _in_number(ch: str) -> bool:
    return ch in NUMBER_CHARACTERS


def _number_around(text: str, at: int) -> Tuple[int, int]:
    """``(start, end)`` of the number that position ``at`` splits (``text[at - 1]`` and
    ``text[at]`` both in it), or ``(at, at)`` where it splits none or the run of digits is too
    long to be one (:data:`LONGEST_NUMBER`)."""
    if not (0 < at < len(text) and _in_number(text[at - 1]) and _in_number(text[at])):
        return at, at
    start, end = at, at
    while start > 0 and _in_number(text[start - 1]) and at - start <= LONGEST_NUMBER:
        start -= 1
    while end < len(text) and _in_number(text[end]) and end - at <= LONGEST_NUMBER:
        end += 1
    return (start, end) if end - start <= LONGEST_NUMBER else (at, at)


def _number_free_edges(text: str, head: int, tail: int) -> Tuple[int, int]:
    """Move the edges of a cut (``text[head:tail]`` goes) outwards so that no number is split:
    one that straddles an edge goes whole into the cut."""
    return _number_around(text, head)[0], _number_around(text, tail)[1]


def shorten(text: Any, limit: int = VALUE_LIMIT, count: bool = True) -> str:
    """``text`` cut in the middle to at most ``limit`` characters, its start and end kept: the
    cut says how many characters it took (``...(99800 characters cut)...``), or is a bare ``…``
    where ``count`` is false (a chart legend, whose tooltip holds the whole label). A number at an
    edge of the cut is never split: it goes whole into the cut."""
    text = _str(text)
    if len(text) <= limit:
        return text
    mark_room = len(CUT_MARK.format(len(text))) if count else 1
    keep = max(limit - mark_room, 2)
    head, tail = _number_free_edges(text, keep - keep // 2, len(text) - keep // 2)
    mark = CUT_MARK.format(tail - head) if count else "…"
    return text[:head] + mark + text[tail:]


def number_text(value: int) -> str:
    """An integer written whole (up to :data:`WHOLE_DIGITS` digits), never cut: a longer one as
    its magnitude and its number of digits (``1.0000e+400 (an integer of 401 digits)``)."""
    size = abs(value)
    if size.bit_length() <= 333:  # 10**100 has 333 bits: str() is cheap and never refused
        whole = str(value)
        if len(whole) - (value < 0) <= WHOLE_DIGITS:
            return whole
    magnitude = math.log10(size)
    exponent = int(magnitude)
    if size.bit_length() <= 200000:  # exact digit count where it is cheap (60 000 digits)
        while exponent > 0 and 10 ** exponent > size:
            exponent -= 1
        while 10 ** (exponent + 1) <= size:
            exponent += 1
    mantissa = min(max(10 ** (magnitude - exponent), 1.0), 9.9999)  # float rounding near 10**n
    return "{}{:.4f}e+{} (an integer of {} digits)".format(
        "-" if value < 0 else "", mantissa, exponent, exponent + 1)


class _Shown(reprlib.Repr):
    """``reprlib`` whose integers are whole (:func:`number_text`), whose strings and other values
    are cut by :func:`shorten` (saying how much), and whose dataclasses show each field."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6
        self.maxfrozenset = self.maxdeque = self.maxarray = 6
        self.maxstring, self.maxother = 60, 80

    def repr_int(self, x: Any, level: int) -> str:
        if not isinstance(x, int):  # a class of that name
            return self.repr_instance(x, level)
        return number_text(x)

    def repr_str(self, x: Any, level: int) -> str:
        if not isinstance(x, str):
            return self.repr_instance(x, level)
        return repr(shorten(x, self.maxstring))

    def repr_instance(self, x: Any, level: int) -> str:
        if is_dataclass(x) and not isinstance(x, type):
            if level <= 0:
                return "{}(...)".format(type(x).__name__)
            try:
                parts = ["{}={}".format(f.name, self.repr1(getattr(x, f.name), level - 1))
                         for f in fields(x)]
            except Exception:  # noqa: BLE001 - a field that raises when read
                parts = ["..."]
            return "{}({})".format(type(x).__name__, ", ".join(parts))
        try:
            text = repr(x)
        except Exception:  # noqa: BLE001 - an object whose __repr__ raises (a plugin's answer)
            return "<{} object>".format(type(x).__name__)
        return shorten(text, self.maxother)


_SHOWN = _Shown()
SHOWN_LIMIT = 300
"""Characters of :func:`shown`'s answer, at most."""


def shown(value: Any) -> str:
    """``repr(value)`` for an error line: strings and other values cut in the middle (saying how
    much), numbers whole, containers to a few items and levels, control characters escaped."""
    try:
        text = _SHOWN.repr(value)
    except Exception:  # noqa: BLE001 - anything a plugin's object raises while it is shown
        text = "<{} object>".format(type(value).__name__)
    return terminal(shorten(text, SHOWN_LIMIT))
