"""Synthetic HL7 v2.5.1 ADT^A04 (register a patient) messages for benchmarks and tests.

Every patient, provider, payer and identifier here is invented: names are drawn from small pools
and recombined, MRNs and policy numbers are random digits, phone numbers use the 555-01xx range
reserved for fiction, e-mail addresses use ``example.com`` / ``example.org`` (RFC 2606) and object
identifiers sit under the ``2.25`` (UUID-derived) arc rather than a real organisation's.

Each message has exactly ten segments, in an order the ADT_A01 structure (HL7 v2.5.1 chapter 3,
section 3.3.4) allows::

    MSH EVN PID PD1 NK1 PV1 (PV2 | DG1) IN1 IN2 IN1

Two insurance groups: primary (IN1 + IN2) and secondary (IN1). Field values follow the v2.5.1 data
types (CX, XPN, XAD, XTN, XCN, PL, CWE, XON) and use the HL7 tables a registration system would
send (0001, 0002, 0004, 0005, 0063, 0131, 0189, 0203). Some values carry characters that must be
escaped (section 2.7): ``&`` as ``\\T\\``, ``|`` as ``\\F\\``, ``^`` as ``\\S\\``, ``~`` as
``\\R\\`` and ``\\`` as ``\\E\\``; some names are non-ASCII (written as UTF-8, and MSH-18 then says
``UNICODE UTF-8``).

The output is canonical ER7: no trailing empty fields, components or subcomponents, so a codec
that re-serialises a message unchanged must write back exactly the same text.

Command line::

    python -m bench.synth --count 20000 --out bench/data/adt_a04.hl7 [--seed 2511]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["DEFAULT_SEED", "ensure_file", "generate", "make_adt_a04", "write_file"]

DEFAULT_SEED = 2511

_ENC = "^~\\&"

# -- pools (invented; recombined at random) -------------------------------------------------------


def _pool(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(","))


_FAMILY = _pool(
    "Núñez, Okafor, Lindqvist, Harrow, Bellweather, Castellanos, Müller, Tran, Abernathy, "
    "Kowalczyk, Delacroix, Whitfield, Oyelaran, Brannigan, Søndergaard, Petrov, Ashdown, Nakamura, "
    "Quintero, Fairbanks, Çelik, Holloway, Marchetti, O'Rourke, Vasquez, Pemberton, Iwasaki, "
    "Randolph, Eberhardt, Mbeki"
)
_GIVEN_F = _pool(
    "María, Adaeze, Elin, Harper, Renée, Zoë, Joanna, Priya, Leticia, Mei, Beatrix, Siobhan, "
    "Amara, Lucía, Ingrid, Noor, Camille, Tamsin"
)
_GIVEN_M = _pool(
    "José, Tobias, Björn, Marcus, Kwame, François, Desmond, Rafael, Hiroshi, Anton, Callum, Emeka, "
    "Luca, Dmitri, Owen, Mateo, Silas, Idris"
)
_MIDDLE = ("Elena", "James", "Rose", "Lee", "Marie", "Alan", "Grace", "Jude", "Ann", "", "", "")
_SUFFIX = ("Jr", "Sr", "II", "III")
_PREFIX_F = ("Ms", "Mrs", "Dr")
_PREFIX_M = ("Mr", "Dr")

_STREETS = _pool(
    "Maple, Larkspur, Quarry, Juniper, Old Mill, Harbor View, Cedar Hollow, Whistler, Kestrel, "
    "Birchwood, Foundry, Marlowe"
)
_STREET_TYPES = ("St", "Ave", "Rd", "Ln", "Ct", "Way", "Blvd", "Dr")
_OTHER_DESIGNATIONS = ("Apt 4B", "Unit 12", "Suite 200", "Bldg C^Unit 3", "Apt 7 & 8", "")
# (city, state, ZIP prefix) - real city/state pairs, invented addresses
_CITIES = (
    ("Springfield", "IL", "627"),
    ("Riverton", "WY", "825"),
    ("Fairview", "TN", "370"),
    ("Greenville", "SC", "296"),
    ("Madison", "WI", "537"),
    ("Salem", "OR", "973"),
    ("Franklin", "MA", "020"),
    ("Georgetown", "TX", "786"),
)

# HL7 table 0005 (CDC race codes) and table 0189 (ethnic group)
_RACE = (
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2076-8", "Native Hawaiian or Other Pacific Islander"),
    ("2131-1", "Other Race"),
)
_ETHNIC = (("2135-2", "Hispanic or Latino"), ("2186-5", "Not Hispanic or Latino"))
_MARITAL = (("S", "Single"), ("M", "Married"), ("D", "Divorced"), ("W", "Widowed"))  # table 0002
_LANGUAGE = (("en", "English"), ("es", "Spanish"), ("vi", "Vietnamese"), ("de", "German"))
_NK_REL = (  # table 0063
    ("SPO", "Spouse"),
    ("PAR", "Parent"),
    ("CHD", "Child"),
    ("SIB", "Sibling"),
    ("FND", "Friend"),
    ("GRD", "Guardian"),
)

# facility ID, name, invented OID
_FACILITIES = (
    ("MAPLEFM", "Maple Grove Family Medicine", "2.25.184592301472019384756"),
    ("HARBORPC", "Harbor Point Primary Care", "2.25.290384756102938475610"),
    ("CEDARIM", "Cedar Hollow Internal Medicine", "2.25.318273645509182736455"),
)
_EMPI = ("EMPI", "2.25.402918374650192837465")
_NPI_AUTHORITY = "NPI&2.16.840.1.113883.4.6&ISO"
_PROVIDERS = (
    ("Okonkwo", "Chidera", "A", "MD"),
    ("Halvorsen", "Greta", "M", "MD"),
    ("Ramírez", "Tomás", "", "DO"),
    ("Whitcombe", "Eleanor", "J", "NP"),
    ("Sato", "Kenji", "", "MD"),
    ("Abara", "Nkem", "O", "PA"),
)
_CLERKS = (("Dunmore", "Pat"), ("Ferreira", "Lu"), ("Hask", "Robin"))

# payer ID (table 0203 NIIP), name (some with delimiters to be escaped), plan ID, plan name
_PAYERS = (
    ("90417", "Smith & Jones Health", "SJH-PPO", "Smith & Jones PPO Gold"),
    ("91288", "Harbor & Pine Mutual", "HPM-HMO", "Harbor & Pine HMO"),
    ("93302", "Northfield Health Plan", "NHP-EPO", "Northfield EPO Silver"),
    ("94851", "Cedar Valley Insurance Co", "CVI-PPO", "Cedar Valley Choice PPO"),
    ("95176", "Lakeside Health & Life", "LHL-HDHP", "Lakeside HDHP | HSA"),
    ("96023", "Prairie Mutual Benefit", "PMB-POS", "Prairie POS Plus"),
)
_PLAN_TYPES = ("PPO", "HMO", "EPO", "POS", "HDHP")
_EMPLOYERS = _pool(
    "Acme Widget Works, Bluebird Logistics, Summit Ridge Schools, Tri-County Water, "
    "Ortega & Sons Roofing, Meridian Software, Riverside Foods Co-op"
)

# admit reason (CWE, ICD-10-CM) and free-text visit descriptions typed by a front desk
_REASONS = (
    ("Z00.00", "Encounter for general adult medical examination without abnormal findings"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("M54.50", "Low back pain, unspecified"),
    ("R05.9", "Cough, unspecified"),
    ("L30.9", "Dermatitis, unspecified"),
)
_VISIT_TEXT = (
    "Annual physical | fasting labs",
    "BP check & med refill",
    "Cough ~3 weeks",
    "Rash on arm^neck",
    "New patient visit",
    "Follow-up",
    "Intake form ref A\\17",
)


# -- ER7 building helpers ----------------------------------------------------------------------


def _esc(value: str) -> str:
    """Escape the default delimiters in a data value (HL7 v2.5.1 section 2.7.1)."""
    if not any(ch in value for ch in "\\|^~&"):
        return value
    return (
        value.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("~", "\\R\\")
        .replace("&", "\\T\\")
    )


def _sub(*parts: str) -> str:
    """Subcomponents (already escaped) joined with ``&``, trailing empties trimmed."""
    return "&".join(parts).rstrip("&")


def _comp(*parts: str) -> str:
    """Components (already escaped) joined with ``^``, trailing empties trimmed."""
    return "^".join(parts).rstrip("^")


def _reps(*parts: str) -> str:
    return "~".join(p for p in parts if p)


def _segment(name: str, fields: Sequence[str]) -> str:
    """``fields[0]`` is field 1 (for MSH: MSH-3; MSH-1 and MSH-2 are written here)."""
    body = "|".join(fields).rstrip("|")
    if name == "MSH":
        return f"MSH|{_ENC}|{body}" if body else f"MSH|{_ENC}"
    return f"{name}|{body}" if body else name


def _fields(**by_number: str) -> list[str]:
    """A field list from ``f3="..."``-style keywords (1-based field numbers)."""
    nums = {int(k[1:]): v for k, v in by_number.items()}
    out = [""] * max(nums)
    for n, v in nums.items():
        out[n - 1] = v
    return out


def _msh_fields(**by_number: str) -> list[str]:
    """Like :func:`_fields` but the list starts at MSH-3."""
    return _fields(**by_number)[2:]


def _ts(t: dt.datetime, seconds: bool = True) -> str:
    return t.strftime("%Y%m%d%H%M%S" if seconds else "%Y%m%d%H%M")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _npi(rng: random.Random) -> str:
    """A 10-digit NPI-style identifier with a valid Luhn check digit (prefix 80840, per CMS)."""
    base = "1" + _digits(rng, 8)
    total = 0
    for i, ch in enumerate(reversed("80840" + base)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return base + str((10 - total % 10) % 10)


def _phone(rng: random.Random, use: str = "PRN", equip: str = "PH") -> str:
    """XTN with the v2.5.1 components: 1 (formatted), 2 use, 3 equipment, 5 country, 6 area, 7."""
    local = "55501" + _digits(rng, 2)
    return _comp(f"(555){local[:3]}-{local[3:]}", use, equip, "", "1", "555", local)


def _address(rng: random.Random, kind: str = "H") -> str:
    """XAD: street^other designation^city^state^ZIP^country^address type."""
    city, state, zip3 = rng.choice(_CITIES)
    street = f"{rng.randint(10, 9899)} {rng.choice(_STREETS)} {rng.choice(_STREET_TYPES)}"
    other = rng.choice(_OTHER_DESIGNATIONS)
    zip_code = zip3 + _digits(rng, 2)
    return _comp(_esc(street), _esc(other), city, state, zip_code, "USA", kind)


def _person(rng: random.Random, sex: str) -> tuple[str, str, str, str, str]:
    """(family, given, middle, suffix, prefix), unescaped."""
    given = rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M)
    prefix = rng.choice(_PREFIX_F if sex == "F" else _PREFIX_M) if rng.random() < 0.3 else ""
    suffix = rng.choice(_SUFFIX) if sex == "M" and rng.random() < 0.08 else ""
    return rng.choice(_FAMILY), given, rng.choice(_MIDDLE), suffix, prefix


def _xpn(name: tuple[str, str, str, str, str], type_code: str = "L") -> str:
    """XPN: family^given^middle^suffix^prefix^degree^name type code (table 0200)."""
    family, given, middle, suffix, prefix = (_esc(p) for p in name)
    return _comp(family, given, middle, suffix, prefix, "", type_code)


def _xcn(rng: random.Random, provider: tuple[str, str, str, str]) -> str:
    """XCN with an NPI-style ID: 1 ID, 2-7 name parts, 9 assigning authority, 10, 13 type."""
    family, given, middle, degree = provider
    name = [_esc(family), _esc(given), middle, "", "", degree]
    return _comp(_npi(rng), *name, "", _NPI_AUTHORITY, "L", "", "", "NPI")


def _date_between(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randrange((end - start).days))


# -- the message ----------------------------------------------------------------------------------

_EPOCH = dt.datetime(2025, 3, 3, 7, 30, 0)


def make_adt_a04(rng: random.Random, n: int) -> str:
    """The ``n``-th synthetic ADT^A04 message as CR-terminated ER7 text.

    ``n`` makes MSH-10 (control ID ``ADT`` + 10 digits) and the visit number unique within a run;
    everything else is drawn from ``rng``, so the same seed and sequence give the same text.
    """
    when = _EPOCH + dt.timedelta(seconds=n * 41 + rng.randrange(40))
    fac_id, fac_name, fac_oid = rng.choice(_FACILITIES)
    authority = _sub(fac_id, fac_oid, "ISO")
    sex = rng.choice("FFFMMMU")
    name = _person(rng, "M" if sex == "U" else sex)
    dob = _date_between(rng, dt.date(1936, 1, 1), dt.date(2023, 12, 31))
    is_child = when.date().year - dob.year < 18
    attending = rng.choice(_PROVIDERS)
    pcp = rng.choice(_PROVIDERS)
    segments: list[str] = []

    # MSH is written last: MSH-18 must name UTF-8 when any segment holds non-ASCII text
    declare_utf8 = rng.random() < 0.35

    # EVN - event type (3.4.1)
    clerk_family, clerk_given = rng.choice(_CLERKS)
    segments.append(
        _segment(
            "EVN",
            _fields(
                f1="A04",
                f2=_ts(when),
                f5=_comp(f"u{_digits(rng, 5)}", clerk_family, clerk_given),
                f6=_ts(when - dt.timedelta(minutes=rng.randrange(1, 20))),
            ),
        )
    )

    # PID - patient identification (3.4.2)
    mrn = _comp(f"M{_digits(rng, 8)}", "", "", authority, "MR")
    empi_type = rng.choice(("PI", "PT"))
    empi = _comp(_digits(rng, 10), "", "", _sub(*_EMPI, "ISO"), empi_type)
    race_code, race_text = rng.choice(_RACE)
    eth_code, eth_text = rng.choice(_ETHNIC)
    lang_code, lang_text = rng.choice(_LANGUAGE)
    marital = ("S", "Single") if is_child else rng.choice(_MARITAL)
    emails = ""
    if rng.random() < 0.4:
        user = f"{name[1][0]}.{name[0]}".lower().encode("ascii", "ignore").decode()
        user = user.replace("'", "")
        emails = _comp("", "NET", "Internet", f"{user}{rng.randint(1, 99)}@example.com")
    segments.append(
        _segment(
            "PID",
            _fields(
                f1="1",
                f3=_reps(mrn, empi),
                f5=_xpn(name),
                f7=dob.strftime("%Y%m%d"),
                f8=sex,
                f10=_comp(race_code, race_text, "CDCREC"),
                f11=_address(rng),
                f13=_reps(_phone(rng, "PRN", rng.choice(("PH", "CP"))), emails),
                f14=_phone(rng, "WPN") if rng.random() < 0.3 else "",
                f15=_comp(lang_code, lang_text, "ISO639"),
                f16=_comp(marital[0], marital[1], "HL70002"),
                f18=_comp(f"A{_digits(rng, 9)}", "", "", authority, "AN"),
                f22=_comp(eth_code, eth_text, "CDCREC"),
            ),
        )
    )

    # PD1 - additional demographics (3.4.10)
    segments.append(
        _segment(
            "PD1",
            _fields(
                f3=_comp(
                    _esc(fac_name),
                    "L",
                    "",
                    "",
                    "",
                    _sub(fac_id, fac_oid, "ISO"),
                    "XX",
                    "",
                    "",
                    fac_id,
                ),
                f4=_xcn(rng, pcp),
                f12="N" if rng.random() < 0.9 else "Y",
            ),
        )
    )

    # NK1 - next of kin (3.4.5)
    if is_child:
        rel_code, rel_text = rng.choice((("PAR", "Parent"), ("GRD", "Guardian")))
    else:
        rel_code, rel_text = rng.choice(_NK_REL)
    nk_sex = rng.choice("FM")
    nk_name = _person(rng, nk_sex)
    if rel_code in ("SPO", "PAR", "CHD") and rng.random() < 0.7:
        nk_name = (name[0], *nk_name[1:])
    segments.append(
        _segment(
            "NK1",
            _fields(
                f1="1",
                f2=_xpn(nk_name),
                f3=_comp(rel_code, rel_text, "HL70063"),
                f4=_address(rng),
                f5=_phone(rng, "PRN", "CP"),
                f7=_comp("EC", "Emergency Contact", "HL70131"),
            ),
        )
    )

    # PV1 - patient visit (3.4.3)
    room = f"EXAM{rng.randint(1, 12)}"
    location = _comp(
        "CLINIC", room, "1", _sub(fac_id, fac_oid, "ISO"), "", "C", "MAIN", "1", _esc(fac_name)
    )
    patient_class = rng.choice("OOOOOOE")
    segments.append(
        _segment(
            "PV1",
            _fields(
                f1="1",
                f2=patient_class,
                f3=location,
                f4="R" if patient_class == "O" else "E",
                f7=_xcn(rng, attending),
                f10=rng.choice(("MED", "FM", "IM", "PED")),
                f14="1",
                f18=patient_class,
                f19=_comp(f"V{n:09d}", "", "", authority, "VN"),
                f20=_comp(rng.choice(("COM", "MCR", "MCD", "SP")), _ts(when, False)),
                f44=_ts(when, False),
            ),
        )
    )

    # PV2 (3.4.4) or DG1 (6.5.2): why the patient came
    reason_code, reason_text = rng.choice(_REASONS)
    visit_text = _esc(rng.choice(_VISIT_TEXT))
    if rng.random() < 0.6:
        segments.append(
            _segment(
                "PV2",
                _fields(f3=_comp(reason_code, _esc(reason_text), "I10"), f12=visit_text),
            )
        )
    else:
        segments.append(
            _segment(
                "DG1",
                _fields(
                    f1="1",
                    f3=_comp(reason_code, _esc(reason_text), "I10"),
                    f4=visit_text,
                    f5=_ts(when),
                    f6="A",
                ),
            )
        )

    # IN1 / IN2 / IN1 - insurance (6.5.6, 6.5.7); primary then secondary
    payers = rng.sample(_PAYERS, 2)
    for order, (payer_id, payer_name, plan_id, plan_name) in enumerate(payers, start=1):
        self_insured = not is_child and (order == 1 and rng.random() < 0.6)
        if self_insured:
            insured, ins_rel, ins_dob = name, ("SEL", "Self"), dob
        else:
            ins_sex = rng.choice("FM")
            insured = (name[0], *_person(rng, ins_sex)[1:])
            ins_rel = ("PAR", "Parent") if is_child else ("SPO", "Spouse")
            ins_dob = _date_between(rng, dt.date(1950, 1, 1), dt.date(2000, 12, 31))
        effective = _date_between(rng, dt.date(2019, 1, 1), dt.date(2025, 1, 1))
        expiration = dt.date(max(effective.year + rng.randint(1, 3), 2025), 12, 31)
        segments.append(
            _segment(
                "IN1",
                _fields(
                    f1=str(order),
                    f2=_comp(plan_id, _esc(plan_name), "L"),
                    f3=_comp(payer_id, "", "", "", "NIIP"),
                    f4=_comp(_esc(payer_name)),
                    f5=_address(rng, "B"),
                    f7=_phone(rng, "WPN"),
                    f8=f"G{_digits(rng, 6)}",
                    f9=_comp(_esc(rng.choice(_EMPLOYERS))),
                    f12=effective.strftime("%Y%m%d"),
                    f13=expiration.strftime("%Y%m%d") if rng.random() < 0.7 else "",
                    f15=rng.choice(_PLAN_TYPES),
                    f16=_xpn(insured),
                    f17=_comp(ins_rel[0], ins_rel[1], "HL70063"),
                    f18=ins_dob.strftime("%Y%m%d"),
                    f19=_address(rng),
                    f22=str(order),
                    f36=f"{payer_id[:2]}{rng.choice('ABCDEFGHJKMNPRSTUVWXYZ')}{_digits(rng, 9)}",
                ),
            )
        )
        if order == 1:
            segments.append(
                _segment(
                    "IN2",
                    _fields(
                        f1=f"E{_digits(rng, 7)}",
                        f3=_comp("", _esc(rng.choice(_EMPLOYERS))),
                        f61=_comp(f"M{_digits(rng, 9)}01", "", "", payer_id, "MB"),
                        f72=_comp(ins_rel[0], ins_rel[1], "HL70063"),
                    ),
                )
            )

    # MSH - message header (2.14.9)
    non_ascii = not "".join(segments).isascii()
    charset = "UNICODE UTF-8" if non_ascii or declare_utf8 else ""
    segments.insert(
        0,
        _segment(
            "MSH",
            _msh_fields(
                f3=_comp("REGISTRAR"),
                f4=_comp(fac_id, fac_oid, "ISO"),
                f5="HL7ENGINE",
                f6="PRACTICEHUB",
                f7=_ts(when) + "-0500",
                f9="ADT^A04^ADT_A01",
                f10=f"ADT{n:010d}",
                f11="P",
                f12="2.5.1",
                f15="AL",
                f16="NE",
                f17="USA",
                f18=charset,
            ),
        ),
    )

    assert len(segments) == 10
    return "\r".join(segments) + "\r"


def generate(count: int, seed: int = DEFAULT_SEED) -> Iterator[str]:
    """``count`` messages from one seeded generator."""
    rng = random.Random(seed)
    for n in range(1, count + 1):
        yield make_adt_a04(rng, n)


def write_file(path: str | Path, count: int, seed: int = DEFAULT_SEED) -> Path:
    """Write ``count`` messages back-to-back (CR segment terminators, a LF after each message)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        for msg in generate(count, seed):
            fh.write(msg)
            fh.write("\n")
    tmp.replace(out)
    return out


def _stamp(count: int, seed: int) -> str:
    """What a generated file depends on: this module's source, the seed and the count."""
    source = Path(__file__).read_bytes()
    return f"{hashlib.sha256(source).hexdigest()} seed={seed} count={count}\n"


def ensure_file(
    path: str | Path, count: int, seed: int = DEFAULT_SEED, regenerate: bool = False
) -> tuple[Path, bool]:
    """Write the file unless an up-to-date one exists; ``(path, written)``.

    A ``<file>.stamp`` next to it records the generator source hash, seed and count, so a file
    written by an older generator is rewritten rather than silently benchmarked.
    """
    out = Path(path)
    stamp_path = out.with_name(out.name + ".stamp")
    stamp = _stamp(count, seed)
    if not regenerate and out.exists() and stamp_path.exists():
        if stamp_path.read_text(encoding="utf-8") == stamp:
            return out, False
    write_file(out, count, seed)
    stamp_path.write_text(stamp, encoding="utf-8")
    return out, True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.synth", description="Write synthetic HL7 v2.5.1 ADT^A04 messages."
    )
    parser.add_argument("--count", type=int, default=20_000, help="number of messages")
    parser.add_argument("--out", type=Path, default=Path("bench/data/adt_a04.hl7"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    path = write_file(args.out, args.count, args.seed)
    print(f"wrote {args.count} messages to {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
