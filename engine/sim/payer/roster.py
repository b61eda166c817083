"""The stub payer's roster (YAML): the synthetic members it knows and what their plans cover.

::

    members:
      SYN100001:                          # the member ID (270/271 2100C NM109)
        last_name: HARLOW
        first_name: ALICE
        birth_date: 1984-03-15
        gender: F                         # F | M | U
        plan: SYNTHETIC GOLD PPO          # EB05
        insurance_type: PR                # EB04 (PR PPO, HM HMO, C1 commercial, MC Medicaid...)
        group: {number: GRP0042, name: SYNTHETIC EMPLOYER}      # REF*6P
        active: true                      # false: EB*6 inactive
        coverage: {start: 2024-01-01, end: 2026-12-31}          # DTP*346 / DTP*347
        in_network:                       # EB12 Y
          copays: {"98": 25, UC: 75}      # EB*B by service type (EB03), per visit
          coinsurance_percent: 20         # EB*A, EB08 .2
          deductible: {individual: 1500, individual_remaining: 650, family: 3000}
          out_of_pocket: {individual: 5000, individual_remaining: 3875}
        out_of_network: {...}             # EB12 N, the same keys
        messages: [REFERRAL REQUIRED FOR SPECIALIST VISITS]    # MSG after the coverage EB
        dependents:                       # answered in 2000D
          - {last_name: HARLOW, first_name: BEN, birth_date: 2012-07-02, gender: M,
             relationship: child}
      SYNERR072:
        reject: {code: "72"}              # AAA*N**72*C in 2100C, whatever is asked

Amounts are dollars; ``individual``/``family`` are the calendar-year amounts (EB06 23) and the
``*_remaining`` ones what is left (EB06 29). Service type codes are 005010X279A1 EB03 codes
(``30`` health benefit plan coverage, ``98`` professional (physician) visit - office, ``UC``
urgent care); quote the numeric ones in YAML. Only synthetic people belong in a roster.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.x12.codes import INSURANCE_TYPES, REJECT_REASONS, SERVICE_TYPES
from engine.yamlfile import parse_file

__all__ = [
    "Accumulator",
    "Coverage",
    "Dependent",
    "Group",
    "Member",
    "NetworkBenefits",
    "RELATIONSHIP_CODES",
    "Reject",
    "Roster",
    "default_roster_file",
    "load_roster",
]

#: roster words for INS02 (individual relationship code) of a dependent
RELATIONSHIP_CODES: dict[str, str] = {
    "spouse": "01",
    "child": "19",
    "life-partner": "53",
    "other": "G8",
}

#: AAA01 per AAA03: "N" when the request's own data is wrong, "Y" when it is valid but no match
_INVALID_REQUEST = frozenset({"15", "58", "64", "65", "66", "71", "72", "73", "74"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accumulator(_Strict):
    """A deductible or out-of-pocket maximum: calendar-year amounts and what remains."""

    individual: Decimal | None = Field(default=None, ge=0)
    individual_remaining: Decimal | None = Field(default=None, ge=0)
    family: Decimal | None = Field(default=None, ge=0)
    family_remaining: Decimal | None = Field(default=None, ge=0)


class NetworkBenefits(_Strict):
    """What the plan pays in (or out of) network."""

    copays: dict[str, Decimal] = Field(default_factory=dict)
    coinsurance_percent: Decimal | None = Field(default=None, ge=0, le=100)
    deductible: Accumulator | None = None
    out_of_pocket: Accumulator | None = None

    @field_validator("copays", mode="before")
    @classmethod
    def _codes_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("copays")
    @classmethod
    def _known_codes(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for code, amount in value.items():
            if code not in SERVICE_TYPES:
                raise ValueError(f"{code!r} is not a service type code (EB03)")
            if amount < 0:
                raise ValueError(f"copay {code}: {amount} is negative")
        return value


class Coverage(_Strict):
    start: date
    end: date | None = None

    @model_validator(mode="after")
    def _order(self) -> Coverage:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"coverage ends ({self.end}) before it starts ({self.start})")
        return self


class Group(_Strict):
    number: str = Field(min_length=1, max_length=50)
    name: str = ""


class Reject(_Strict):
    """An AAA the stub answers for this member (in 2100C), whatever the request says."""

    code: str
    follow_up: Literal["C", "N", "P", "R", "S", "W", "X", "Y"] = "C"

    @field_validator("code", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return f"{value:02d}" if isinstance(value, int) else value

    @field_validator("code")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in REJECT_REASONS:
            raise ValueError(f"{value!r} is not an AAA03 reject reason code")
        return value

    @property
    def valid_request(self) -> bool:
        """AAA01: N when the request's own data is at fault, Y otherwise."""
        return self.code not in _INVALID_REQUEST


Gender = Literal["F", "M", "U"]


class Dependent(_Strict):
    last_name: str = Field(min_length=1)
    first_name: str = Field(min_length=1)
    middle_name: str = ""
    suffix: str = ""
    birth_date: date
    gender: Gender = "U"
    relationship: Literal["spouse", "child", "life-partner", "other"] = "child"
    active: bool = True


class Member(_Strict):
    """A subscriber. Names and birth date are needed unless ``reject`` answers for them."""

    last_name: str = ""
    first_name: str = ""
    middle_name: str = ""
    suffix: str = ""
    birth_date: date | None = None
    gender: Gender = "U"
    plan: str = Field(default="", max_length=50)
    insurance_type: str = ""
    group: Group | None = None
    active: bool = True
    coverage: Coverage | None = None
    in_network: NetworkBenefits | None = None
    out_of_network: NetworkBenefits | None = None
    messages: list[str] = Field(default_factory=list)
    dependents: list[Dependent] = Field(default_factory=list)
    reject: Reject | None = None

    @field_validator("insurance_type")
    @classmethod
    def _insurance_type(cls, value: str) -> str:
        if value and value not in INSURANCE_TYPES:
            raise ValueError(f"{value!r} is not an insurance type code (EB04)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Member:
        if self.reject is None and not (self.last_name and self.first_name and self.birth_date):
            raise ValueError("a member needs last_name, first_name and birth_date (or a reject)")
        if self.reject is None and self.coverage is None:
            raise ValueError("a member needs coverage dates (coverage: {start: ...})")
        for text in self.messages:
            if len(text) > 264:
                raise ValueError("a message is at most 264 characters (MSG01)")
        return self


class Roster(_Strict):
    members: dict[str, Member] = Field(default_factory=dict)

    @field_validator("members", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value


def default_roster_file() -> Path:
    """The built-in synthetic roster."""
    return Path(str(resources.files("engine.sim.payer") / "specs" / "roster.yaml"))


def load_roster(path: Path | None = None) -> Roster:
    """Read a roster file (default the built-in one); ConfigError names file, line and key."""
    path = path or default_roster_file()
    where = f"(built-in) {path.name}" if path == default_roster_file() else str(path)
    return parse_file(path, Roster, where)
