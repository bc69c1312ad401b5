"""The package's source reads as written: a docstring with LaTeX in a plain string turns
``\\tilde`` into a tab, ``\\bmod`` into a backspace and ``\\approx`` into a bell, and
``\\sqrt`` is an invalid escape (a warning today, an error in a later Python)."""

import ast
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ldiff"
MODULES = sorted(PACKAGE.rglob("*.py"))
CONTROL = {"\t": "tab", "\b": "backspace", "\a": "bell", "\f": "form feed", "\v": "vertical tab"}


def test_no_string_of_the_package_holds_an_escape_it_did_not_mean():
    found = []
    for path in MODULES:
        where = path.relative_to(PACKAGE.parent)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # invalid escapes: DeprecationWarning / SyntaxWarning
            try:
                tree = compile(path.read_text(), str(path), "exec", ast.PyCF_ONLY_AST)
            except (DeprecationWarning, SyntaxWarning, SyntaxError) as warning:  # 3.11 raises the warning as a SyntaxError
                found.append(f"{where}: {warning}")
                continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [f"{where}:{node.lineno}: a {name}" for char, name in CONTROL.items() if char in node.value]
                # a carriage return is meant only as a progress line's first character
                if "\r" in node.value.lstrip("\r"):
                    found.append(f"{where}:{node.lineno}: a carriage return")
    assert len(MODULES) > 50 and not found, f"write these strings raw (r\"\"\"...\"\"\"): {found}"
