"""The routing table: the contract between the operator, which publishes it, and the proxies, which follow it.

Users never know which shard holds their mail, so every IMAP, POP3, LMTP and
ManageSieve connection goes through a proxy that looks the user up here. The
lookup has three steps, and only the last one changes at a failover:

1. **user → slot**, computed, never stored: `slot_of(user, slot_count)` is
   the first 8 bytes of SHA-256 over the UTF-8 of the canonical user name, read
   as a big-endian unsigned 64-bit integer, modulo the cluster's slot count.
   The canonical name is `NFC(lower(NFC(user)))`: Unicode NFC normalisation,
   then Unicode default lower-casing (Python's `str.lower`, which applies the
   full SpecialCasing mappings and the Final_Sigma rule), then NFC again. For
   an ASCII login that is plain ASCII lower-casing, which a Lua or C proxy can
   reproduce with `string.lower` and any SHA-256. The unit tests carry a table
   of test vectors to check other implementations against.
2. **slot → shard**, stored: the table's `slots`, as runs `[first, last,
   shard]` covering every slot exactly once (`null` for a slot with no shard
   yet). A per-user entry in `overrides` (users moved on their own) wins over
   the slot.
3. **shard → master**, stored: one row per shard in `shards`. A proxy routes
   to `masterHost` (the master pod's own DNS name, which changes in the same
   table version as `master`, so a proxy that follows the table can never keep
   talking to a demoted master through a stale Service endpoint) only when
   `state` is `serving`; any other state, an unassigned slot, or a shard with
   no row, is refused with a temporary error so that clients retry.

The document is JSON, written by `render_table` one shard row, slot run and
override per line with sorted keys, so two versions differ by the lines that
really changed: a failover is the version and `writtenAt` lines plus one shard
row. `version` only ever grows; `validate_table` is what a proxy sidecar runs
before taking a new document, and refuses one that is malformed or older than
what it has (unless written later: a recreated table, see
`succession_problems`). `writtenAt` (optional, RFC 3339 UTC with milliseconds)
is when the operator published that version; it routes nobody, lets a proxy
measure how long a new table took to reach it, and tells a recreated table
from an old copy.

This module is pure and imports nothing from Kubernetes, so a proxy sidecar
can use it alone.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from mailshard.api.constants import DNS_LABEL_PATTERN

FORMAT: Final = 1
"""The document format; a proxy refuses a format it does not know."""

HASH: Final = "sha256-nfc-lower"
"""Names the user → slot function above, so a document made with another one is refused, never misread."""

TABLE_KEY: Final = "routing.json"
"""The key of the routing ConfigMap holding the document."""

OVERRIDES_KEY: Final = "overrides.yaml"
"""The key of the user's overrides ConfigMap (MailCluster `spec.routing.overridesConfigMap`).

It holds one YAML (or JSON) mapping of user → shard name. ConfigMap keys must
match `[-._a-zA-Z0-9]+`, so e-mail addresses cannot be keys of the ConfigMap
itself; they are keys inside this one document instead.
"""

MAX_SLOT_COUNT: Final = 65536

_SHARD_NAME = re.compile(DNS_LABEL_PATTERN)


# --- step 1: user → slot -------------------------------------------------------------------------


def canonical_user(user: str) -> str:
    """The form of a user name that is hashed and that overrides are keyed by (see the module docstring)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", user).lower())


def slot_of(user: str, slot_count: int) -> int:
    """The slot of a user: SHA-256 of the canonical name, first 8 bytes big-endian, modulo `slot_count`."""
    return _slot_of_canonical(canonical_user(user), slot_count)


def _slot_of_canonical(canonical: str, slot_count: int) -> int:
    if not 1 <= slot_count <= MAX_SLOT_COUNT:
        raise ValueError(f"slot count {slot_count} is outside 1..{MAX_SLOT_COUNT}")
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % slot_count


# --- steps 2 and 3: the table ------------------------------------------------------------------


class ShardState(enum.StrEnum):
    """What a proxy does with a user of this shard."""

    SERVING = "serving"
    """Route to `masterHost`."""
    FENCED = "fenced"
    """A failover is in progress or the master is fenced out: refuse temporarily, never route to the old master."""
    UNREADY = "unready"
    """The shard exists but its master is not ready (being built, or down before a failover): refuse temporarily."""
    MISSING = "missing"
    """The MailShard is gone while slots or overrides still point at it: refuse temporarily until they are moved."""


@dataclass(frozen=True)
class ShardRoute:
    """One row of `shards`: where a shard's users go right now."""

    state: ShardState
    master: str | None = None
    """The member that is master, e.g. `inbox-1-b`."""
    master_host: str | None = None
    """The master pod's own DNS name; what a proxy connects to."""
    endpoint: str | None = None
    """The `<shard>-master` Service, for clients that cannot follow the table."""

    def to_document(self) -> dict[str, str]:
        document = {"state": self.state.value}
        for key, value in (("master", self.master), ("masterHost", self.master_host), ("endpoint", self.endpoint)):
            if value is not None:
                document[key] = value
        return document


@dataclass(frozen=True)
class RoutingTable:
    """A whole routing table. Treat it as immutable: the mappings are never changed in place."""

    version: int
    slots: tuple[str | None, ...]
    """Slot → shard name, or None for a slot no shard has been given yet. Its length is the slot count."""
    shards: Mapping[str, ShardRoute] = field(default_factory=dict)
    overrides: Mapping[str, str] = field(default_factory=dict)
    """Canonical user name → shard name."""
    written_at: datetime.datetime | None = None
    """When the operator published this version (UTC, whole milliseconds); None in a document without it."""

    @property
    def slot_count(self) -> int:
        return len(self.slots)

    def same_routes(self, other: RoutingTable) -> bool:
        """Whether the two tables route every user alike (everything but the version and write time is equal)."""
        return (
            self.slots == other.slots
            and dict(self.shards) == dict(other.shards)
            and dict(self.overrides) == dict(other.overrides)
        )

    def slots_of(self, shard: str) -> tuple[int, ...]:
        return tuple(slot for slot, owner in enumerate(self.slots) if owner == shard)

    def runs(self) -> list[tuple[int, int, str | None]]:
        """The slots as maximal runs `(first, last, shard)` of consecutive slots with the same shard."""
        runs: list[tuple[int, int, str | None]] = []
        for slot, owner in enumerate(self.slots):
            if runs and runs[-1][2] == owner:
                runs[-1] = (runs[-1][0], slot, owner)
            else:
                runs.append((slot, slot, owner))
        return runs


@dataclass(frozen=True)
class Decision:
    """Where one user goes, and why."""

    user: str
    """The canonical user name."""
    slot: int
    shard: str | None
    overridden: bool
    route: ShardRoute | None

    @property
    def host(self) -> str | None:
        """Where to connect, or None when the user must be refused with a temporary error."""
        if self.route is None or self.route.state is not ShardState.SERVING:
            return None
        return self.route.master_host

    @property
    def refusal(self) -> str | None:
        """Why the user is refused, for the proxy's log; None when the user is routed."""
        if self.shard is None:
            return f"slot {self.slot} has no shard yet"
        if self.route is None:
            return f"shard {self.shard} has no row in the table"
        if self.route.state is not ShardState.SERVING:
            return f"shard {self.shard} is {self.route.state.value}"
        return None


def route_user(table: RoutingTable, user: str) -> Decision:
    """The full lookup a proxy makes: override, else slot; then the shard's row."""
    canonical = canonical_user(user)
    slot = _slot_of_canonical(canonical, table.slot_count)
    override = table.overrides.get(canonical)
    shard = override if override is not None else table.slots[slot]
    route = table.shards.get(shard) if shard is not None else None
    return Decision(user=canonical, slot=slot, shard=shard, overridden=override is not None, route=route)


# --- the document ----------------------------------------------------------------------------------


def _line(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)


def _block(opening: str, closing: str, lines: Sequence[str]) -> str:
    if not lines:
        return opening + closing
    return opening + "\n" + ",\n".join(f"    {line}" for line in lines) + "\n  " + closing


def render_table(table: RoutingTable) -> str:
    """The canonical document: the same table always gives the same text, one row/run/override per line."""
    shards = [f"{_line(name)}: {_line(table.shards[name].to_document())}" for name in sorted(table.shards)]
    slots = [_line([first, last, owner]) for first, last, owner in table.runs()]
    overrides = [f"{_line(user)}: {_line(table.overrides[user])}" for user in sorted(table.overrides)]
    written = f'  "writtenAt": {_line(format_written_at(table.written_at))},\n' if table.written_at is not None else ""
    return (
        "{\n"
        f'  "format": {FORMAT},\n'
        f'  "hash": {_line(HASH)},\n'
        f'  "version": {table.version},\n'
        f"{written}"
        f'  "slotCount": {table.slot_count},\n'
        f'  "shards": {_block("{", "}", shards)},\n'
        f'  "slots": {_block("[", "]", slots)},\n'
        f'  "overrides": {_block("{", "}", overrides)}\n'
        "}\n"
    )


def as_written_at(when: datetime.datetime) -> datetime.datetime:
    """`when` as a table's `written_at`: UTC, cut to whole milliseconds, which is what the document carries."""
    utc = when.astimezone(datetime.UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def format_written_at(when: datetime.datetime) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. `2025-06-01T12:00:00.125Z`."""
    utc = as_written_at(when)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def table_digest(text: str) -> str:
    """SHA-256 of a document's text; the operator records it to notice a table edited behind its back."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RoutingTableError(ValueError):
    """A document that is not a usable routing table; `problems` says every way in which it is not."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def parse_table(text: str) -> RoutingTable:
    """Read a document. Raises RoutingTableError listing every problem found."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RoutingTableError([f"not JSON: {error}"]) from error
    problems: list[str] = []
    table = _read_document(document, problems)
    if problems or table is None:
        raise RoutingTableError(problems or ["unreadable"])
    return table


def succession_problems(previous: RoutingTable, new: RoutingTable) -> list[str]:
    """Why `new` may not replace `previous`: the version went back, or was reused for different routes.

    A lower version written later than `previous` (both with `writtenAt`) is a table that was recreated, its
    versions started again (a MailCluster recreated, the API's store restored from a backup): it is taken, or
    the proxies would keep an outdated table until the new versions caught up. A restored old copy carries its
    old `writtenAt`, and a hand-written document none, so both are still refused.
    """
    if new.slot_count != previous.slot_count:
        return [f"slotCount changed from {previous.slot_count} to {new.slot_count}, which would move almost every user"]
    if new.version < previous.version and not _written_after(new, previous):
        return [f"version {new.version} is older than the version {previous.version} already in use"]
    if new.version == previous.version and not new.same_routes(previous):
        return [f"version {new.version} is reused for different routes; a change must increase the version"]
    return []


def _written_after(new: RoutingTable, previous: RoutingTable) -> bool:
    """Whether `new` was published after `previous`: a lower version then means the table was recreated."""
    return new.written_at is not None and previous.written_at is not None and new.written_at > previous.written_at


def validate_table(text: str, *, previous: RoutingTable | None = None) -> list[str]:
    """Every problem that should stop a proxy from taking this document (empty: take it)."""
    try:
        table = parse_table(text)
    except RoutingTableError as error:
        return list(error.problems)
    return succession_problems(previous, table) if previous is not None else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_document(document: Any, problems: list[str]) -> RoutingTable | None:
    if not isinstance(document, dict):
        problems.append("the document must be a JSON object")
        return None
    if document.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT}, got {document.get('format')!r}")
    if document.get("hash") != HASH:
        problems.append(f"hash must be {HASH!r}, got {document.get('hash')!r}")
    version: Any = document.get("version")
    if not _is_int(version) or version < 1:
        problems.append(f"version must be an integer of at least 1, got {version!r}")
    slot_count: Any = document.get("slotCount")
    if not _is_int(slot_count) or not 1 <= slot_count <= MAX_SLOT_COUNT:
        problems.append(f"slotCount must be an integer in 1..{MAX_SLOT_COUNT}, got {slot_count!r}")
        return None
    written_at = _read_written_at(document.get("writtenAt"), problems)
    shards = _read_shards(document.get("shards"), problems)
    slots = _read_slots(document.get("slots"), slot_count, shards, problems)
    overrides = _read_overrides(document.get("overrides"), shards, problems)
    if problems or slots is None:
        return None
    return RoutingTable(version=version, slots=slots, shards=shards, overrides=overrides, written_at=written_at)


_WRITTEN_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _read_written_at(raw: Any, problems: list[str]) -> datetime.datetime | None:
    if raw is None:
        return None
    if isinstance(raw, str) and _WRITTEN_AT.fullmatch(raw):
        try:
            return datetime.datetime.fromisoformat(raw)
        except ValueError:
            pass
    problems.append(f"writtenAt must be a UTC time like 2025-06-01T12:00:00.125Z, got {raw!r}")
    return None


def _read_shards(raw: Any, problems: list[str]) -> dict[str, ShardRoute]:
    if not isinstance(raw, dict):
        problems.append("shards must be an object of shard name → row")
        return {}
    shards: dict[str, ShardRoute] = {}
    for name, row in raw.items():
        where = f"shards[{name!r}]"
        if not _SHARD_NAME.fullmatch(name):
            problems.append(f"{where}: not a valid shard name")
        if not isinstance(row, dict):
            problems.append(f"{where} must be an object")
            continue
        raw_state: Any = row.get("state")
        try:
            state = ShardState(raw_state)
        except ValueError:
            problems.append(f"{where}.state must be one of {[s.value for s in ShardState]}, got {row.get('state')!r}")
            continue
        fields: dict[str, str | None] = {}
        for key in ("master", "masterHost", "endpoint"):
            value = row.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                problems.append(f"{where}.{key} must be a non-empty string")
                value = None
            fields[key] = value
        unknown = set(row) - {"state", "master", "masterHost", "endpoint"}
        if unknown:
            problems.append(f"{where} has unknown fields {sorted(unknown)}")
        named = fields["master"] is not None and fields["masterHost"] is not None
        if state in (ShardState.SERVING, ShardState.FENCED) and not named:
            problems.append(f"{where} is {state.value} but does not name its master and masterHost")
        shards[name] = ShardRoute(
            state=state, master=fields["master"], master_host=fields["masterHost"], endpoint=fields["endpoint"]
        )
    return shards


def _read_slots(
    raw: Any, slot_count: int, shards: Mapping[str, ShardRoute], problems: list[str]
) -> tuple[str | None, ...] | None:
    if not isinstance(raw, list):
        problems.append("slots must be a list of [first, last, shard] runs")
        return None
    slots: list[str | None] = []
    for index, run in enumerate(raw):
        where = f"slots[{index}]"
        if not (isinstance(run, list) and len(run) == 3 and _is_int(run[0]) and _is_int(run[1])):
            problems.append(f"{where} must be [first, last, shard], got {run!r}")
            return None
        first, last, owner = run
        if first != len(slots):
            expected = len(slots)
            what = "overlaps the run before it" if first < expected else f"leaves slots {expected}..{first - 1} out"
            problems.append(f"{where} starts at {first}, expected {expected}: it {what}")
            return None
        if last < first or last >= slot_count:
            problems.append(f"{where} ends at {last}, which is before its first slot {first} or past the last slot")
            return None
        if owner is not None and not isinstance(owner, str):
            problems.append(f"{where}: the shard must be a name or null, got {owner!r}")
        elif owner is not None and owner not in shards:
            problems.append(f"{where}: slots {first}..{last} point at shard {owner!r}, which has no row in shards")
        slots.extend([owner if isinstance(owner, str) else None] * (last - first + 1))
    if len(slots) != slot_count:
        problems.append(f"slots cover 0..{len(slots) - 1} but slotCount is {slot_count}")
        return None
    return tuple(slots)


def _read_overrides(raw: Any, shards: Mapping[str, ShardRoute], problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.append("overrides must be an object of user → shard name")
        return {}
    overrides: dict[str, str] = {}
    for user, shard in raw.items():
        if canonical_user(user) != user:
            problems.append(f"overrides: user {user!r} is not in canonical form {canonical_user(user)!r}")
        if not isinstance(shard, str) or shard not in shards:
            problems.append(f"overrides: user {user!r} points at shard {shard!r}, which has no row in shards")
            continue
        overrides[user] = shard
    return overrides


# --- the user's overrides ConfigMap --------------------------------------------------------------


class OverridesError(ValueError):
    """An overrides document the operator cannot use; `problems` lists why."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def parse_overrides(text: str) -> dict[str, str]:
    """Read the `overrides.yaml` document: a mapping of user → shard name, keyed by canonical user afterwards.

    Raises OverridesError listing every problem. An empty document means no overrides.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise OverridesError([f"not YAML: {error}"]) from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise OverridesError([f"must be a mapping of user → shard name, got a {type(document).__name__}"])
    problems: list[str] = []
    overrides: dict[str, str] = {}
    for user, shard in document.items():
        if not isinstance(user, str) or not user:
            problems.append(f"user {user!r} must be a non-empty string (quote it)")
            continue
        if not isinstance(shard, str) or not _SHARD_NAME.fullmatch(shard):
            problems.append(f"user {user!r}: {shard!r} is not a shard name")
            continue
        key = canonical_user(user)
        if overrides.get(key, shard) != shard:
            problems.append(f"user {user!r} is listed twice (as {key!r}) with different shards")
            continue
        overrides[key] = shard
    if problems:
        raise OverridesError(problems)
    return overrides
