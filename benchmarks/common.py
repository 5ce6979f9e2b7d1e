"""Shared by every benchmark: record a run as JSON under ``benchmarks/results/`` with machine, versions, command
and git commit, and time GPU/CPU work properly (warm-up, synchronisation, median of repeats)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def git_commit() -> str:
    """HEAD (with '-dirty' for uncommitted changes); ``$LEANFORMER_COMMIT`` where the tree travels without .git."""
    if os.environ.get("LEANFORMER_COMMIT"):
        return os.environ["LEANFORMER_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LEANFORMER_COMMIT", "unknown")


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def record(name: str, results: dict | list, out_dir: str | os.PathLike | None = None, stamp: str | None = None
           ) -> Path:
    """Write ``{name}-{UTC timestamp}.json`` holding machine, versions, command, commit and ``results``.

    ``out_dir`` defaults to ``$OUT`` when set (where ``benchmarks/gpu.sh`` collects a GPU job's files), else
    ``benchmarks/results``.
    A fixed ``stamp`` rewrites the same file (atomically): long benchmarks record after every row, so a run cut
    short keeps what it measured.
    """
    out = Path(out_dir or os.environ.get("OUT") or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    stamp = stamp or utc_stamp()
    payload = {
        "benchmark": name,
        "date": stamp,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "commit": git_commit(),
        "machine": machine_info(),
        "results": results,
    }
    path = out / f"{name}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def parse_settings(text: str) -> dict:
    """Kernel launch settings as a flag gives them, ``"BLOCK_M=128,num_warps=8,USE_TMA=false"`` -> a dict of ints and
    booleans (``ValueError`` for a value that is neither)."""
    out = {}
    for pair in text.split(","):
        key, _, val = pair.partition("=")
        flag = {"true": True, "false": False}.get(val.strip().lower())
        out[key.strip()] = int(val) if flag is None else flag
    return out


def checked_settings(text: str, allowed, flag: str) -> dict:
    """:func:`parse_settings` of one ``flag`` value whose keys must be in ``allowed`` and whose values are ints
    (``"default"``: ``{}``); anything else exits with one line naming the value and what is allowed."""
    if text == "default":
        return {}
    try:
        out = parse_settings(text)
    except ValueError:
        out = None
    if out is None or any(k not in allowed or type(v) is not int for k, v in out.items()):
        raise SystemExit(f"{flag}: bad setting {text!r}; each is KEY=INT with KEY one of {', '.join(allowed)}, "
                         "or 'default'")
    return out


@contextlib.contextmanager
def patched(changes):
    """Each ``(object, name, value)`` set for the block, the old values put back after it (an error included)."""
    changes = list(changes)
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def bench(fn, warmup: int = 3, repeat: int = 10, sync=None) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` (CUDA-synchronised when ``sync``)."""
    import torch

    if sync is None:
        sync = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if sync:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        if sync:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graphed(fn):
    """Capture ``fn`` in a CUDA graph (after two warm-up calls on a side stream); return the graph's replay."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def gpu_profile(fn, title: str, file_name: str, row_limit: int = 15, sites: bool = False) -> str:
    """Run ``fn()`` once under the CUDA profiler; append the top GPU ops (by total CUDA time) under ``title`` to
    ``$OUT/file_name`` (or ``./file_name``) and return the table. ``sites``: also the GPU time of each PyTorch op
    by the innermost project function that issued it (:func:`gpu_time_by_site`), where small ops add up."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if sites else [])
    with profile(activities=acts, with_stack=sites) as p:
        fn()
        torch.cuda.synchronize()
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=row_limit, max_name_column_width=70)
    if sites:
        table += "\n" + gpu_time_by_site(p.events(), row_limit)
    with open(Path(os.environ.get("OUT", ".")) / file_name, "a") as f:
        f.write(f"--- {title}\n{table}\n")
    return table


def op_site(event, marker: str = "leanformer/"):
    """``(site, outer)`` of a profiled PyTorch op: the innermost function on its Python stack from a file under
    ``marker`` (``"?"`` if none), as ``path(line): name`` after the marker, and the outermost op event it runs
    inside (a sort's copies count as the sort; ``event`` itself when it is top-level)."""
    site, op, parent = "?", event, event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            op = parent
        elif marker in parent.name:
            site = parent.name[parent.name.index(marker) + len(marker):]
            break
        parent = parent.cpu_parent
    return site, op


def gpu_time_by_site(events, row_limit: int = 30, marker: str = "leanformer/") -> str:
    """GPU time of the kernels each PyTorch op launched, summed by (innermost function of a file under ``marker``
    on the op's Python stack, op): a table, largest first, with the op count. Kernels launched outside any
    PyTorch op (Triton's) are left to the op table above; an op inside another counts as the outer one."""
    sums: dict[tuple[str, str], list[float]] = {}
    for e in events:
        us = sum(k.duration for k in getattr(e, "kernels", ()))
        if not us or not e.name.startswith("aten::"):
            continue
        site, outer = op_site(e, marker)
        cell = sums.setdefault((site, outer.name), [0.0, 0])
        cell[0] += us
        cell[1] += 1
    rows = sorted(sums.items(), key=lambda kv: -kv[1][0])[:row_limit]
    total = sum(v[0] for v in sums.values())
    lines = [f"GPU time of PyTorch ops by call site: {total:.1f} us in all", f"{'us':>9} {'ops':>4}  site / op"]
    lines += [f"{us:9.1f} {n:4d}  {site} / {op}" for (site, op), (us, n) in rows]
    return "\n".join(lines)
