"""Symbol names as WinDbg shows them: the decorations of the linker's public names taken off.

Public symbols (S_PUB32) carry the names the linker saw; procedures and data symbols carry the names
of the source. WinDbg shows the source's names, so a public's name is undecorated here:

- x86 C names (the only decorated C names; x64 and ARM64 C names are plain): ``_name`` (cdecl),
  ``_name@8`` (stdcall), ``@name@8`` (fastcall), ``name@@8`` (vectorcall) give ``name``;
- Microsoft C++ names (``?``...): the qualified name, without the signature, as WinDbg prints a
  function (``?FxStubInitTypes@@YAJXZ`` -> ``FxStubInitTypes``, ``??0Queue@Wdf@@QEAA@XZ`` ->
  ``Wdf::Queue::Queue``, ``??1Queue@@UEAA@XZ`` -> ``Queue::~Queue``, ``??4Queue@@...`` ->
  ``Queue::operator=``, ``??_7Queue@@6B@`` -> ``Queue::`vftable'``, ``??_C@_07...`` (a string
  literal) -> ```string'``, ``?A0x1234abcd`` -> ```anonymous namespace'``, back-references ``0``-``9``).

What is left as it is (decorated): names with template arguments (``?$``), names in a function's
local scope (``?1??f@@...``), conversion operators (``??B``, whose name is their type) and anything
else this grammar does not cover. The format is Microsoft's name decoration scheme as described in
public write-ups (the operator codes are those of the Visual C++ ABI); nothing here calls a demangler.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

# ??<code>: operators and compiler-made names (the code follows the first "?" of the name).
_SPECIAL_NAMES = {
    "2": "operator new", "3": "operator delete", "4": "operator=", "5": "operator>>", "6": "operator<<",
    "7": "operator!", "8": "operator==", "9": "operator!=", "A": "operator[]", "C": "operator->",
    "D": "operator*", "E": "operator++", "F": "operator--", "G": "operator-", "H": "operator+",
    "I": "operator&", "J": "operator->*", "K": "operator/", "L": "operator%", "M": "operator<",
    "N": "operator<=", "O": "operator>", "P": "operator>=", "Q": "operator,", "R": "operator()",
    "S": "operator~", "T": "operator^", "U": "operator|", "V": "operator&&", "W": "operator||",
    "X": "operator*=", "Y": "operator+=", "Z": "operator-=",
    "_0": "operator/=", "_1": "operator%=", "_2": "operator>>=", "_3": "operator<<=", "_4": "operator&=",
    "_5": "operator|=", "_6": "operator^=", "_7": "`vftable'", "_8": "`vbtable'", "_9": "`vcall'",
    "_A": "`typeof'", "_B": "`local static guard'", "_D": "`vbase destructor'",
    "_E": "`vector deleting destructor'", "_F": "`default constructor closure'",
    "_G": "`scalar deleting destructor'", "_H": "`vector constructor iterator'",
    "_I": "`vector destructor iterator'", "_J": "`vector vbase constructor iterator'",
    "_K": "`virtual displacement map'", "_L": "`eh vector constructor iterator'",
    "_M": "`eh vector destructor iterator'", "_N": "`eh vector vbase constructor iterator'",
    "_O": "`copy constructor closure'", "_S": "`local vftable'", "_T": "`local vftable constructor closure'",
    "_U": "operator new[]", "_V": "operator delete[]", "_X": "`placement delete closure'",
    "_Y": "`placement delete[] closure'",
}
_CONSTRUCTOR, _DESTRUCTOR, _STRING_LITERAL = "0", "1", "_C"
_X86_C_NAME = re.compile(r"^(?:_([^@?]+)(?:@\d+)?|@([^@?]+)@\d+|([^@?]+)@@\d+)$")
_IDENTIFIER = re.compile(r"[^@?]+")


def undecorate(name: str, x86: bool = False) -> str:
    """``name`` as WinDbg shows it; names this module does not understand are returned as they are.
    ``x86``: the name is from a 32-bit x86 image (whose C names carry decorations)."""
    if name.startswith("?"):
        return _undecorate_cpp(name) or name
    if x86:
        match = _X86_C_NAME.match(name)
        if match:
            return next(group for group in match.groups() if group)
    return name


def _undecorate_cpp(name: str) -> Optional[str]:
    """The qualified name of a Microsoft C++ decorated name, or None when it holds what is not read."""
    if name.startswith("??"):
        code = name[2:4] if name[2:3] == "_" else name[2:3]
        if code == _STRING_LITERAL:
            return "`string'"
        rest = name[2 + len(code):]
        if code in (_CONSTRUCTOR, _DESTRUCTOR):
            scopes = _scopes(rest)
            if not scopes:
                return None
            special = scopes[0] if code == _CONSTRUCTOR else "~" + scopes[0]
            return "::".join(reversed(scopes)) + "::" + special
        if code not in _SPECIAL_NAMES:
            return None
        special = _SPECIAL_NAMES[code]
        scopes = _scopes(rest)
        if scopes is None:
            return None
        return "::".join(list(reversed(scopes)) + [special])
    scopes = _scopes(name[1:])
    return "::".join(reversed(scopes)) if scopes else None


def _scopes(text: str) -> Optional[List[str]]:
    """The name fragments of ``text`` up to the ``@`` that ends them, innermost first: ``name@``,
    a back-reference ``0``-``9`` to an earlier fragment, ``?A0x...@`` (anonymous namespace)."""
    fragments: List[str] = []
    remembered: List[str] = []
    position = 0
    while position < len(text):
        character = text[position]
        if character == "@":
            return fragments
        if character.isdigit():
            index = int(character)
            if index >= len(remembered):
                return None
            fragments.append(remembered[index])
            position += 1
            continue
        fragment, position = _fragment(text, position)
        if fragment is None:
            return None
        fragments.append(fragment)
        if len(remembered) < 10:
            remembered.append(fragment)
    return None  # no terminating "@": not a decorated name this grammar reads


def _fragment(text: str, position: int) -> Tuple[Optional[str], int]:
    if text.startswith("?A0x", position) or text.startswith("?A", position) and text[position + 2:position + 3] == "@":
        end = text.find("@", position)
        return ("`anonymous namespace'", end + 1) if end >= 0 else (None, position)
    match = _IDENTIFIER.match(text, position)
    if match is None or text[match.end():match.end() + 1] != "@":
        return None, position  # templates (?$), nested names (?1??...) and the like
    return match.group(0), match.end() + 1
