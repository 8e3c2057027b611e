"""VCB's VM search specifiers (``name:web01``, ``powerstate:on``, ...), parsed.

Kept apart from the inventory so that telling a specifier from a path costs no vSphere imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from vcbfs.errors import VcbfsError

__all__ = ["KINDS", "Spec", "SpecError", "parse_spec"]

KINDS = ("name", "ipaddr", "uuid", "moref", "powerstate", "any", "none")


class SpecError(VcbfsError, ValueError):
    """A search specifier vcbfs does not understand."""


@dataclass(frozen=True)
class Spec:
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_spec(text: str) -> Spec:
    """``kind:value`` as VCB wrote it; the kind is case-insensitive."""
    kind, colon, value = text.partition(":")
    kind = kind.strip().lower()
    if not colon or kind not in KINDS:
        raise SpecError(
            f"bad VM specifier {text!r}: use name:, ipaddr:, uuid:, moref:, "
            "powerstate:on|off|suspended, any: or none:"
        )
    value = value.strip()
    if kind == "powerstate" and value.lower() not in ("on", "off", "suspended"):
        raise SpecError(f"bad power state {value!r}: use on, off or suspended")
    if kind in ("name", "ipaddr", "uuid", "moref") and not value:
        raise SpecError(f"{kind}: needs a value")
    return Spec(kind, value)
