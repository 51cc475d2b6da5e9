"""``input.filter``: one restricted row-filter grammar for every engine, parsed once into a typed tree.

A filter is never handed to a SQL parser (Spark SQL, DataFusion, pyiceberg): ``parse_filter`` turns it
into the small tree below, which compiles to a ``pyarrow.compute.Expression`` (``to_arrow``: Ray, the
connectors, Delta reads), a pyspark ``Column`` (``to_spark``) or, for scan push-down only, a pyiceberg
expression (``to_iceberg``). Grammar (keywords in any case)::

    filter    := or
    or        := and (OR and)*
    and       := not (AND not)*
    not       := NOT not | '(' filter ')' | predicate
    predicate := operand (= | != | <> | < | <= | > | >=) operand     (at least one side a column)
               | column [NOT] IN '(' literal (, literal)* ')'
               | column IS [NOT] NULL
               | column [NOT] LIKE 'pattern'                        (% and _, backslash escapes)
    operand   := column | literal
    column    := name | `any name`                                   (`` inside backquotes is one `)
    literal   := 'text' ('' is one ') | [-]int | [-]float | TRUE | FALSE

SQL three-valued logic on both engines: a comparison, IN or LIKE on a null value is unknown, NOT unknown
is unknown, and a row is kept only when the filter is true. Comparing with NULL (``x = NULL``, ``IN (NULL)``)
is refused: it is never true; write ``x IS NULL``. Anything else (function calls such as ``reflect(...)``,
subqueries, ``;``, double-quoted text) is a ``FilterError`` naming the token and its position.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "And", "Column", "Compare", "FilterError", "In", "IsNull", "Like", "Literal", "Not", "Or", "Predicate",
    "check_schema", "columns", "parse_filter", "to_arrow", "to_iceberg", "to_spark",
]


class FilterError(ValueError):
    """A filter outside the grammar; the message names the offending token and its position."""


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Literal:
    value: str | int | float | bool


Operand = Column | Literal


@dataclass(frozen=True)
class Compare:
    op: str  # one of = != < <= > >= (<> is stored as !=)
    left: Operand
    right: Operand


@dataclass(frozen=True)
class In:
    column: Column
    values: tuple[str | int | float | bool, ...]
    negated: bool = False


@dataclass(frozen=True)
class IsNull:
    column: Column
    negated: bool = False


@dataclass(frozen=True)
class Like:
    column: Column
    pattern: str
    negated: bool = False


@dataclass(frozen=True)
class Not:
    child: Predicate


@dataclass(frozen=True)
class And:
    left: Predicate
    right: Predicate


@dataclass(frozen=True)
class Or:
    left: Predicate
    right: Predicate


Predicate = Compare | In | IsNull | Like | Not | And | Or

# ---------------------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"""(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      |(?P<str>'(?:[^']|'')*')
      |(?P<bq>`(?:[^`]|``)+`)
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<op><=|>=|<>|!=|=|<|>|\(|\)|,|-)""",
    re.X,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "TRUE", "FALSE"}
_COMPARISONS = {"=", "!=", "<>", "<", "<=", ">", ">="}
MAX_DEPTH = 64  # NOT/parenthesis nesting; deeper input is refused rather than exhausting the stack
MAX_CONDITIONS = 256  # comparisons, IN, LIKE, IS NULL in one filter (the compilers recurse over AND/OR)


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, str, bq, name, kw, op, end, bad (no token starts here)
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return [*tokens, _Tok("end", "end of filter", pos)]
        match = _TOKEN.match(text, pos)
        if match is None:  # reported when the parser gets here, so an earlier error is reported first
            return [*tokens, _Tok("bad", text[pos:pos + 12], pos)]
        kind = match.lastgroup or ""
        if kind == "name" and match.group().upper() in _KEYWORDS:
            kind = "kw"
        tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i, self.depth, self.conditions = text, _tokenize(text), 0, 0, 0

    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def is_(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind in ("kw", "op") and tok.text.upper() in words

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, expected: str, tok: _Tok | None = None) -> FilterError:
        tok = tok or self.peek()
        if tok.kind == "bad":
            return FilterError(f"unexpected {tok.text!r} at position {tok.pos} of {self.text!r}")
        return FilterError(f"expected {expected}, got {tok.text!r} at position {tok.pos} of {self.text!r}")

    def expect(self, word: str) -> None:
        if not self.is_(word):
            raise self.fail(repr(word))
        self.take()

    def parse(self) -> Predicate:
        tree = self.or_()
        if self.peek().kind != "end":
            raise self.fail("AND, OR or the end of the filter")
        return tree

    def or_(self) -> Predicate:
        tree = self.and_()
        while self.is_("OR"):
            self.take()
            tree = Or(tree, self.and_())
        return tree

    def and_(self) -> Predicate:
        tree = self.not_()
        while self.is_("AND"):
            self.take()
            tree = And(tree, self.not_())
        return tree

    def not_(self) -> Predicate:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"the filter nests NOT/parentheses deeper than {MAX_DEPTH} levels")
        try:
            if self.is_("NOT"):
                self.take()
                return Not(self.not_())
            if self.is_("("):
                self.take()
                tree = self.or_()
                self.expect(")")
                return tree
            return self.predicate()
        finally:
            self.depth -= 1

    def predicate(self) -> Predicate:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"the filter has more than {MAX_CONDITIONS} conditions; use IN (...) for long lists")
        left = self.operand()
        negated = False
        if isinstance(left, Column) and self.is_("NOT") and self.peek(1).text.upper() in ("IN", "LIKE"):
            self.take()
            negated = True
        if isinstance(left, Column) and self.is_("IN"):
            self.take()
            self.expect("(")
            values = [self.literal("a literal in IN (...)")]
            while self.is_(","):
                self.take()
                values.append(self.literal("a literal in IN (...)"))
            self.expect(")")
            kinds = {str if isinstance(v, str) else bool if isinstance(v, bool) else float for v in values}
            if len(kinds) > 1:
                raise FilterError(f"IN (...) mixes text, numbers and booleans in {self.text!r}")
            return In(left, tuple(values), negated)
        if isinstance(left, Column) and self.is_("LIKE"):
            self.take()
            tok = self.take()
            if tok.kind != "str":
                raise self.fail("a quoted pattern after LIKE", tok)
            return Like(left, tok.text[1:-1].replace("''", "'"), negated)
        if isinstance(left, Column) and self.is_("IS"):
            self.take()
            negated = self.is_("NOT")
            if negated:
                self.take()
            self.expect("NULL")
            return IsNull(left, negated)
        if not self.is_(*_COMPARISONS):
            raise self.fail("a comparison (= != <> < <= > >=), IN, LIKE or IS [NOT] NULL")
        op = self.take().text
        right = self.operand()
        if not (isinstance(left, Column) or isinstance(right, Column)):
            raise FilterError(f"a comparison needs a column, got two literals in {self.text!r}")
        return Compare("!=" if op == "<>" else op, left, right)

    def operand(self) -> Operand:
        tok = self.peek()
        if tok.kind in ("name", "bq"):
            self.take()
            if self.is_("("):
                raise FilterError(
                    f"function calls are not allowed: {tok.text}( at position {tok.pos} of {self.text!r}"
                )
            name = tok.text if tok.kind == "name" else tok.text[1:-1].replace("``", "`")
            return Column(name)
        return Literal(self.literal("a column or a literal"))

    def literal(self, expected: str) -> str | int | float | bool:
        tok = self.take()
        if tok.kind == "kw" and tok.text.upper() == "NULL":
            raise FilterError(
                f"comparing with NULL (position {tok.pos} of {self.text!r}) is never true; "
                "use 'column IS NULL' or 'column IS NOT NULL'"
            )
        if tok.kind == "kw" and tok.text.upper() in ("TRUE", "FALSE"):
            return tok.text.upper() == "TRUE"
        if tok.kind == "str":
            return tok.text[1:-1].replace("''", "'")
        sign = 1
        if tok.kind == "op" and tok.text == "-":
            sign, tok = -1, self.take()
        if tok.kind == "num":
            is_int = tok.text.isdigit()
            return sign * (int(tok.text) if is_int else float(tok.text))
        raise self.fail(expected, tok)


def parse_filter(text: str) -> Predicate:
    """The tree of ``text``; ``FilterError`` naming the bad token for anything outside the grammar."""
    if not isinstance(text, str) or not text.strip():
        raise FilterError(f"a filter is a non-empty string, got {text!r}")
    return _Parser(text).parse()


def columns(tree: Predicate) -> list[str]:
    """The column names ``tree`` reads, in order of first use."""
    found: dict[str, None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Column):
            found[node.name] = None
        elif isinstance(node, Compare | And | Or):
            walk(node.left)
            walk(node.right)
        elif isinstance(node, In | IsNull | Like):
            walk(node.column)
        elif isinstance(node, Not):
            walk(node.child)

    walk(tree)
    return list(found)


def check_schema(tree: Predicate, schema: Any) -> None:
    """``FilterError`` when ``tree`` names a column ``schema`` (a pyarrow schema) lacks or mixes types.

    Binds the Arrow expression to an empty table of ``schema``: cheap, and before any row is read.
    """
    import pyarrow as pa

    missing = [name for name in columns(tree) if schema.get_field_index(name) < 0]
    if missing:
        raise FilterError(f"filter column(s) {missing} are not in the input (columns: {schema.names})")
    try:
        schema.empty_table().filter(to_arrow(tree))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise FilterError(f"the filter does not fit the input's column types ({schema}): {exc}") from None


# ---------------------------------------------------------------------------------------------- compiling

_OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge}


def fold(
    tree: Predicate,
    leaf: Callable[[Predicate], Any],
    *,
    negate: Callable[[Any], Any] = operator.invert,
    both: Callable[[Any, Any], Any] = operator.and_,
    either: Callable[[Any, Any], Any] = operator.or_,
) -> Any:
    """Compile ``tree`` bottom-up: ``leaf`` turns each comparison into an engine expression, and NOT/AND/OR
    combine them (default: the ``~``/``&``/``|`` operators that Arrow and Spark expressions both define)."""

    def build(node: Predicate) -> Any:
        if isinstance(node, Not):
            return negate(build(node.child))
        if isinstance(node, And):
            return both(build(node.left), build(node.right))
        if isinstance(node, Or):
            return either(build(node.left), build(node.right))
        return leaf(node)

    return build(tree)


def to_arrow(tree: Predicate) -> Any:
    """A ``pyarrow.compute.Expression`` with SQL semantics (Kleene AND/OR, null in => null out)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def operand(node: Operand) -> Any:
        return pc.field(node.name) if isinstance(node, Column) else pc.scalar(node.value)

    def leaf(node: Predicate) -> Any:
        if isinstance(node, Compare):
            return _OPS[node.op](operand(node.left), operand(node.right))
        if isinstance(node, In):
            col = pc.field(node.column.name)
            # is_in says false for a null input; SQL says unknown (so NOT IN drops the row, as Spark does)
            found = pc.if_else(col.is_valid(), col.isin(pa.array(node.values)), pa.scalar(None, pa.bool_()))
            return ~found if node.negated else found
        if isinstance(node, IsNull):
            test = pc.field(node.column.name).is_null()
            return ~test if node.negated else test
        if isinstance(node, Like):
            test = pc.match_like(pc.field(node.column.name), pattern=node.pattern)
            return ~test if node.negated else test
        raise TypeError(f"not a filter tree node: {node!r}")

    return fold(tree, leaf)


def to_spark(tree: Predicate) -> Any:
    """A pyspark ``Column`` (``F.col``/``F.lit`` and Column operators; no SQL text is parsed)."""
    from pyspark.sql import functions as F

    def col(node: Column) -> Any:
        return F.col("`" + node.name.replace("`", "``") + "`")  # dots and backquotes stay in the name

    def operand(node: Operand) -> Any:
        return col(node) if isinstance(node, Column) else F.lit(node.value)

    def leaf(node: Predicate) -> Any:
        if isinstance(node, Compare):
            return _OPS[node.op](operand(node.left), operand(node.right))
        if isinstance(node, In):
            test = col(node.column).isin(list(node.values))
            return ~test if node.negated else test
        if isinstance(node, IsNull):
            return col(node.column).isNotNull() if node.negated else col(node.column).isNull()
        if isinstance(node, Like):
            test = col(node.column).like(node.pattern)
            return ~test if node.negated else test
        raise TypeError(f"not a filter tree node: {node!r}")

    return fold(tree, leaf)


def to_iceberg(tree: Predicate) -> Any:
    """A pyiceberg row filter for scan push-down, or ``AlwaysTrue`` when some part has no exact equivalent.

    Push-down only: apply ``to_arrow`` to the scanned rows as well (it is the exact filter; Iceberg's own
    evaluation keeps a superset of the rows SQL logic keeps).
    """
    from pyiceberg import expressions as e

    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    kinds = {"=": e.EqualTo, "!=": e.NotEqualTo, "<": e.LessThan, "<=": e.LessThanOrEqual,
             ">": e.GreaterThan, ">=": e.GreaterThanOrEqual}

    class NoPushdown(Exception):
        pass

    def leaf(node: Predicate) -> Any:
        if isinstance(node, Compare):
            left, right, op = node.left, node.right, node.op
            if isinstance(left, Literal) and isinstance(right, Column):
                left, right, op = right, left, flipped.get(op, op)
            if not (isinstance(left, Column) and isinstance(right, Literal)):
                raise NoPushdown
            return kinds[op](left.name, right.value)
        if isinstance(node, In):
            return (e.NotIn if node.negated else e.In)(node.column.name, node.values)
        if isinstance(node, IsNull):
            return (e.NotNull if node.negated else e.IsNull)(node.column.name)
        if isinstance(node, Like):
            prefix = node.pattern[:-1]
            if not node.pattern.endswith("%") or any(ch in prefix for ch in "%_\\"):
                raise NoPushdown
            return (e.NotStartsWith if node.negated else e.StartsWith)(node.column.name, prefix)
        raise NoPushdown

    try:
        return fold(tree, leaf, negate=e.Not, both=e.And, either=e.Or)
    except NoPushdown:
        return e.AlwaysTrue()
