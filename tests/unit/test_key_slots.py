"""Every Lua script and transaction keeps its keys in one Redis Cluster slot (shared.core.keys).

The slots are computed with redis-py's own ``key_slot`` (the cluster client's routing), for many
random key ids and job ids; a builder whose keys could land in two slots fails here."""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from shared.core import keys

ROOT = Path(__file__).resolve().parents[2]
KEY_IDS = [secrets.token_hex(6) for _ in range(200)]


def one_slot(names: list[str]) -> bool:
    return len({key_slot(name.encode()) for name in names}) == 1


def test_every_slot_has_a_canonical_tag() -> None:
    assert all(key_slot(("x{" + keys.slot_tag(n) + "}y").encode()) == n for n in range(keys.SLOTS))


def test_a_job_id_lands_in_its_keys_slot_and_keeps_its_shape() -> None:
    for key_id in KEY_IDS:
        job_id = keys.new_job_id(key_id)
        assert re.fullmatch(r"[0-9a-f]{28}", job_id)
        assert key_slot(keys.job(job_id).encode()) == key_slot(keys.usage(key_id).encode())
        assert (
            keys.key_slot(keys.job(job_id))
            == keys.tenant_slot(key_id)
            == key_slot(keys.api_key(key_id).encode())
        )


def test_an_id_of_another_shape_still_keeps_its_keys_together() -> None:
    for job_id in ["short", "x" * 64, "ABCDEF" * 5]:
        assert one_slot([keys.job(job_id), keys.job_event_log(job_id), keys.pending_upload(job_id)])


SCRIPTS: dict[str, Callable[[str, str, str], list[str]]] = {
    "admission": lambda k, j, e: keys.admission_keys(k),
    "admission + poll": lambda k, j, e: keys.admission_keys(k, keys.job(j)),
    "job admission": lambda k, j, e: keys.admit_job_keys(k, "20261207"),
    "job creation": lambda k, j, e: keys.create_job_keys(k, j),
    "job creation + idempotency": lambda k, j, e: keys.create_job_keys(k, j, keys.idempotency(k, "d" * 64)),
    "transition": lambda k, j, e: keys.transition_keys(k, j),
    "delete / retention": lambda k, j, e: keys.forget_job_keys(k, j),
    "publish": lambda k, j, e: keys.publish_keys(),
    "pick": lambda k, j, e: keys.pick_keys(e),
    "take": lambda k, j, e: keys.take_keys(k, e),
    "ack / hand back / delay / dead letter / promote": lambda k, j, e: keys.entry_done_keys(e),
    "promote": lambda k, j, e: keys.promote_keys(),
    "webhook enqueue / claim / record": lambda k, j, e: keys.webhook_keys(f"msg_{j}_completed"),
    "webhook state in the job": lambda k, j, e: [keys.job(j)],
    "sync waits": lambda k, j, e: [keys.sync_waits(k)],
    "open uploads": lambda k, j, e: [keys.open_uploads(k)],
    "rate": lambda k, j, e: [keys.rate(k)],
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_scripts_keys_share_one_slot(name: str) -> None:
    build = SCRIPTS[name]
    for key_id in KEY_IDS:
        names = build(key_id, keys.new_job_id(key_id), f"{secrets.randbelow(10**13)}-0")
        assert names and one_slot(names), (name, names)


def test_every_script_is_given_its_keys_by_a_builder() -> None:
    """Each script run in shared/ (``redis_client.run_script``) passes its keys through a
    ``keys.*`` builder or one key name,
    and no script builds a key name inside Lua (a key a cluster could not route)."""
    sources = {p: p.read_text() for p in (ROOT / "shared").rglob("*.py")}
    defined = r'^(_?[A-Z_]+) = \(?\s*"""(.*?)"""'
    scripts = {p: re.findall(defined, text, re.S | re.M) for p, text in sources.items()}
    lua = [(p, name, body) for p, found in scripts.items() for name, body in found if "redis.call" in body]
    assert len(lua) >= 12
    for path, name, body in lua:
        # Every key argument of redis.call is KEYS[n]; ARGV may only be values or members.
        for call in re.findall(r"redis\.call\('(\w+)', ([^,)]+)", body):
            if call[0] not in ("PUBLISH",):
                assert call[1].startswith("KEYS["), (path.name, name, call)
    evals = [
        m
        for text in sources.values()
        for m in re.findall(r"run_script\(\s*[\w.]+,\s*(_[A-Z_]+),\s*(\d+),\s*([^,]+)", text)
    ]
    assert len(evals) >= 12
    for _script, count, first in evals:
        assert first.startswith("*keys.") or count == "1", (_script, first)


def test_the_builders_named_here_are_all_tested() -> None:
    builders = {n for n, f in inspect.getmembers(keys, inspect.isfunction) if n.endswith("_keys")}
    tested = set(
        re.findall(
            r"keys\.(\w+_keys)\(", inspect.getsource(inspect.getmodule(test_each_scripts_keys_share_one_slot))
        )
    )  # type: ignore[arg-type]
    assert builders <= tested
