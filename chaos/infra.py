"""The database and the disk: ``postgres`` (a private PostgreSQL cluster restarted, crashed and
made unreachable mid-run) and ``disk-full`` (the store's file system filled up, then freed).

``postgres`` never touches the machine's shared cluster: it runs ``initdb`` into a temporary
directory (as the ``postgres`` user when the campaign runs as root: PostgreSQL refuses root),
starts the cluster with ``pg_ctl`` on a free port of 127.0.0.1 with its socket in that directory,
and puts a :class:`~chaos.proxy.TcpProxy` between it and the engine: the engine's
``ENGINE_DATABASE_URL`` names the proxy, the verdict reads the cluster directly. Faults, in
turn: ``pg_ctl restart -m fast``, ``pg_ctl restart -m immediate`` (a crash: recovery from the
WAL), every connection cut, the database unreachable for 3-8 s, every packet delayed 50 ms.

``disk-full`` needs root (a mount): a 512 MiB tmpfs under a temporary directory holds the
engine's ``var/`` (the SQLite store, its WAL, the file destination's folder); a filler file
takes every free byte for 5-10 s at a time, then is deleted. The receiver must NAK (AE/AR) or
stop accepting while it cannot store, never answer AA for what it could not store, and take
messages again once there is room. The mount is unmounted after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text

from chaos.harness import Context, Scenario
from chaos.processes import free_port
from chaos.proxy import TcpProxy
from chaos.scenarios import pause

__all__ = ["INFRA"]

log = logging.getLogger(__name__)


# -- a private PostgreSQL cluster -----------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _pg_ctl(ctx: Context, *args: str) -> None:
    tmp = Path(ctx.extra["pg_dir"])
    argv = [str(_pg_bin() / "pg_ctl"), "-D", str(tmp / "data"), "-l", str(tmp / "pg.log")]
    subprocess.run(_as_postgres([*argv, *args]), check=True, capture_output=True, timeout=120)


async def _pg_setup(ctx: Context) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
    ctx.extra["pg_dir"] = str(tmp)
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    port = free_port()
    ctx.extra["pg_port"] = port
    initdb = [str(_pg_bin() / "initdb"), "-D", str(tmp / "data"), "-U", "postgres"]
    initdb += ["--auth=trust", "-E", "UTF8", "--no-sync"]
    await asyncio.to_thread(
        subprocess.run, _as_postgres(initdb), check=True, capture_output=True, timeout=120
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp}"
    await asyncio.to_thread(_pg_ctl, ctx, "-w", "-o", options, "start")
    admin = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE chaos"))
    finally:
        admin.dispose()
    proxy = TcpProxy(port).start()
    ctx.proxy = proxy
    ctx.db_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/chaos"
    ctx.extra["engine_db_url"] = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/chaos"


def _pg_env(ctx: Context) -> dict[str, str]:
    return {"ENGINE_DATABASE_URL": str(ctx.extra["engine_db_url"])}


async def _pg_teardown(ctx: Context) -> None:
    if ctx.proxy is not None:
        ctx.proxy.stop()
    if ctx.extra.get("keep") and "pg_dir" in ctx.extra:
        log.warning(
            "PostgreSQL left running: %s (stop: pg_ctl -D %s/data stop)",
            ctx.db_url,
            ctx.extra["pg_dir"],
        )
        return
    if "pg_dir" in ctx.extra:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            await asyncio.to_thread(_pg_ctl, ctx, "-m", "immediate", "stop")
        shutil.rmtree(ctx.extra["pg_dir"], ignore_errors=True)


async def postgres_faults(ctx: Context) -> None:
    proxy = ctx.proxy
    assert proxy is not None
    done = {"restart": 0, "crash": 0, "cut": 0, "unreachable": 0, "delay": 0}
    kinds = list(done)
    n = 0
    while await pause(ctx, ctx.rng.uniform(4, 8)):
        kind = kinds[n % len(kinds)]
        n += 1
        if kind == "restart":
            await asyncio.to_thread(_pg_ctl, ctx, "-w", "-m", "fast", "restart")
        elif kind == "crash":
            await asyncio.to_thread(_pg_ctl, ctx, "-w", "-m", "immediate", "restart")
        elif kind == "cut":
            proxy.cut()
        elif kind == "unreachable":
            proxy.down()
            await asyncio.sleep(ctx.rng.uniform(3, 8))
            proxy.up()
        else:
            proxy.delay_s = 0.05
            await asyncio.sleep(5)
            proxy.delay_s = 0.0
        done[kind] += 1
    proxy.up()
    proxy.delay_s = 0.0
    ctx.faults.append(
        f"PostgreSQL: {done['restart']} restarts, {done['crash']} crash restarts, "
        f"{done['cut']} cuts, {done['unreachable']} outages of 3-8 s, "
        f"{done['delay']} 5 s of 50 ms delay"
    )


# -- the disk filling up --------------------------------------------------------------------


async def _disk_setup(ctx: Context) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("disk-full needs root (it mounts a tmpfs)")
    mount = Path(tempfile.mkdtemp(prefix="chaos-disk-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    ctx.extra["mount"] = str(mount)
    var = mount / "var"
    var.mkdir()
    ctx.db_url = f"sqlite:///{var / 'engine.db'}"
    ctx.outbox = var / "outbox"


def _disk_env(ctx: Context) -> dict[str, str]:
    return {"ENGINE_VAR_DIR": str(Path(ctx.extra["mount"]) / "var")}


async def _disk_teardown(ctx: Context) -> None:
    mount = ctx.extra.get("mount")
    if mount is None:
        return
    result = subprocess.run(["umount", mount], capture_output=True, timeout=30)
    if result.returncode != 0:  # something still holds it: detach now, freed when let go
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
    with contextlib.suppress(OSError):
        os.rmdir(mount)


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; the bytes written."""
    chunk = b"\0" * (1 << 20)
    written = 0
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    # what is left, a page at a time (so not even a small write fits)
    with path.open("ab", buffering=0) as f:
        while True:
            try:
                written += f.write(b"\0" * 4096)
            except OSError:
                break
    return written


async def disk_full(ctx: Context) -> None:
    filler = Path(ctx.extra["mount"]) / "filler"
    fills, died = 0, 0
    while await pause(ctx, ctx.rng.uniform(5, 10)):
        await asyncio.to_thread(_fill, filler)
        fills += 1
        held = ctx.rng.uniform(5, 10)
        while held > 0:
            await asyncio.sleep(1)
            held -= 1
        filler.unlink()
        if not ctx.engine.alive():  # it stopped on a full disk: started again, counted
            died += 1
            await asyncio.to_thread(ctx.engine.start)
    with contextlib.suppress(FileNotFoundError):
        filler.unlink()
    ctx.faults.append(
        f"the store's disk full {fills} times (5-10 s each)"
        + (f"; engine serve exited by itself {died} times (restarted)" if died else "")
    )


INFRA = [
    Scenario(
        "postgres",
        "a private PostgreSQL restarted, crashed, cut off and delayed mid-run",
        postgres_faults,
        setup=_pg_setup,
        teardown=_pg_teardown,
        env=_pg_env,
    ),
    Scenario(
        "disk-full",
        "the store's disk (a 512 MiB tmpfs) full for 5-10 s at a time",
        disk_full,
        setup=_disk_setup,
        teardown=_disk_teardown,
        env=_disk_env,
    ),
]
