"""What a message carries that no mapping rule took: the "not mapped" warnings stored on the
message (and printed by the CLI), so data is never dropped in silence."""

from __future__ import annotations

from itertools import compress

from engine.hl7v2.codec import Message

__all__ = ["not_mapped"]

_NOTHING: frozenset[int] = frozenset()


def not_mapped(
    message: Message, used: dict[int, set[int]], ignore: dict[str, list[int]]
) -> list[str]:
    """One line per segment occurrence whose valued fields no rule took a value from.

    A field counts as valued when it holds more than delimiters and the explicit null ``""``.
    MSH is the envelope (the engine reads it itself) and is never reported; ``ignore`` (the
    message map's) lists fields left out on purpose.

    Incomplete: the check is per field; a component no datatype map reads (XAD-10, say) is not
    reported.
    """
    lines: list[str] = []
    segments = message.segments
    totals: dict[str, int] = {}
    for seg in segments:
        totals[seg.name] = totals.get(seg.name, 0) + 1
    seen: dict[str, int] = {}
    for seg in segments:
        name = seg.name
        n = seen[name] = seen.get(name, 0) + 1
        if name == "MSH":
            continue
        skip = ignore.get(name)
        if skip is not None and not skip:
            continue
        took = used.get(id(seg), _NOTHING)
        fields = seg.fields()
        # the fields that hold something and no rule read, as set operations (in C)
        candidates = set(compress(range(len(fields)), fields))
        candidates.discard(0)
        candidates -= took
        if skip:
            candidates.difference_update(skip)
        if not candidates:
            continue
        d = seg.delimiters
        blank = d.component + d.repetition + d.subcomponent + " "
        left = [
            i
            for i in sorted(candidates)
            if fields[i].strip(blank) not in ("", '""')
            # a field whose first repetition was read: left only if it has more that are valued
            and (-i not in took or _more_repetitions(fields[i], d.repetition, blank))
        ]
        if not left:
            continue
        label = name if totals[name] == 1 else f"{name}[{n}]"
        if id(seg) not in used:
            lines.append(
                f"{label}: no mapping took this segment (fields "
                + ", ".join(str(i) for i in left)
                + ")"
            )
            continue
        lines.append(
            f"{label}: not mapped: "
            + ", ".join(
                f"{name}-{i}" + (" (repetitions after the first)" if -i in took else "")
                for i in left
            )
        )
    return lines


def _more_repetitions(raw: str, rep: str, blank: str) -> bool:
    return rep in raw and any(r.strip(blank) not in ("", '""') for r in raw.split(rep)[1:])
