"""Rows -> keys: a flow frame reduced, with vectorised work only, to the keys the evaluator
must decide, each with one representative flow.

1. **Distinct addresses.** `src_ip`/`dst_ip` are dictionary-encoded (polars Categorical); only
   the distinct addresses are looked at in Python.
2. **Classes.** Each distinct address gets an equivalence class (`classes.py`), each port a port
   class (lookup tables over 0..65535 plus "no port"), protocol and ICMP type/code a dense id.
3. **Keys.** Per row, one 64-bit integer packs (source class, destination class, same-node bit,
   protocol, source-port class, destination-port class, ICMP id); a hash-based dictionary
   encoding (pyarrow) gives the distinct keys and each row's key index in one pass.

Reading and encoding run in a worker thread while Python works out the classes (polars, numpy
and pyarrow release the GIL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from enforcer.evaluate import Flow
from enforcer.resolve import ClusterState
from flowtui.whatif.classes import (
    INVALID,
    NULL_PORT,
    AddressClasses,
    PortClasses,
    address_classes,
    collect_tests,
    port_classes,
)
from flowtui.whatif.frames import ensure_frame

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


# --------------------------------------------------------------------------------------------
# Progress


class Progress(Protocol):
    """Where long runs report how far they are; the CLI draws bars, the default draws nothing."""

    def phase(self, description: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    def phase(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)
    _t: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._t
        self._t = now


# --------------------------------------------------------------------------------------------
# Rows -> keys


@dataclass
class Keyed:
    """A flow frame reduced to keys.

    Per row: `key_idx` (index into the per-key arrays), the address codes, and the destination
    port as looked up (`dst_port`, NULL_PORT for none). Per key: its packed value (`keys`), the
    source and destination class, and the representative flow (None: not decidable, e.g. not an
    address, or IPv4 to IPv6)."""

    frame: pl.DataFrame
    key_idx: npt.NDArray[np.int32]
    src_code: npt.NDArray[np.uint32]
    dst_code: npt.NDArray[np.uint32]
    dst_port: npt.NDArray[np.int32]
    index_by_code: I64  # dictionary code -> distinct-address index (len(texts): no address)
    keys: U64
    flows: list[Flow | None]
    key_src_cls: I64
    key_dst_cls: I64
    addresses: AddressClasses
    sports: PortClasses
    dports: PortClasses

    @property
    def rows(self) -> int:
        return len(self.key_idx)

    def key_index(self) -> npt.NDArray[np.int32]:
        """Per row, the index of its key."""
        return self.key_idx


def _dictionary(frame: pl.DataFrame) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], I64, list[str]]:
    """Per-row codes of `src_ip` and `dst_ip` in one dictionary, the codes that occur, and their
    strings. String columns are dictionary-encoded into a fresh polars `Categories` (each string
    hashed once, in native code, without the GIL); Categorical and Enum columns are used as
    they are."""
    src, dst = frame.get_column("src_ip"), frame.get_column("dst_ip")
    fresh = not ((isinstance(src.dtype, pl.Categorical | pl.Enum)) and src.dtype == dst.dtype)
    if fresh:
        dtype = pl.Categorical(pl.Categories.random())
        src, dst = src.cast(pl.String).cast(dtype), dst.cast(pl.String).cast(dtype)
    if isinstance(src.dtype, pl.Enum):
        strings = src.dtype.categories
    else:
        assert isinstance(src.dtype, pl.Categorical)
        strings = src.dtype.categories.to_series()
    null = len(strings)
    s_code = src.to_physical().fill_null(null).to_numpy()
    d_code = dst.to_physical().fill_null(null).to_numpy()
    if fresh:  # every string of a fresh dictionary occurs in one of the columns
        codes = np.arange(null, dtype=np.int64)
    else:
        counts = np.bincount(s_code, minlength=null + 1) + np.bincount(d_code, minlength=null + 1)
        codes = np.flatnonzero(counts[:null])
    texts = strings.gather(codes).fill_null("").to_list()
    return s_code, d_code, codes, texts


def _small_ints(frame: pl.DataFrame, column: str, null: int) -> npt.NDArray[np.int32]:
    """An integer column as int32 for table lookups: nulls and values outside 0..null as `null`."""
    col = pl.col(column)
    if not frame.schema[column].is_integer():
        col = col.cast(pl.Int64, strict=False)
    out = frame.select(pl.when(col.is_between(0, null)).then(col).otherwise(null).cast(pl.Int32)).to_series()
    return np.asarray(out.to_numpy(), dtype=np.int32)


def _dense_lut(values: npt.NDArray[np.int32], size: int) -> tuple[U64, I64]:
    """A lookup table value -> dense id (uint64, for key packing), and the distinct values."""
    uniq = np.sort(pl.Series(values).unique().to_numpy()).astype(np.int64)
    lut = np.zeros(size, dtype=np.uint64)
    lut[uniq] = np.arange(len(uniq), dtype=np.uint64)
    return lut, uniq


@dataclass
class _Service:
    """Per row, (protocol, source-port class, destination-port class, ICMP type/code) packed
    into one integer below `radix`, and how to unpack it."""

    code: U64
    radix: list[int]  # protocols, source-port classes, destination-port classes, ICMP pairs
    protos: I64
    icmps: I64
    dst_port: npt.NDArray[np.int32]  # per row, NULL_PORT for none

    @property
    def size(self) -> int:
        return int(np.prod(np.array(self.radix, dtype=np.float64)))


def _service(frame: pl.DataFrame, sports: PortClasses, dports: PortClasses) -> _Service:
    n = frame.height
    proto = _small_ints(frame, "proto", 256)
    p_lut, protos = _dense_lut(proto, 257)
    code = p_lut[proto]
    del proto
    code *= np.uint64(sports.count)
    code += sports.lut64[_small_ints(frame, "src_port", NULL_PORT)]
    code *= np.uint64(dports.count)
    dst_port = _small_ints(frame, "dst_port", NULL_PORT)
    code += dports.lut64[dst_port]
    if frame.get_column("icmp_type").null_count() < n or frame.get_column("icmp_code").null_count() < n:
        icmp = _small_ints(frame, "icmp_type", 256) * 257 + _small_ints(frame, "icmp_code", 256)
        i_lut, icmps = _dense_lut(icmp, 257 * 257)
        code *= np.uint64(len(icmps))
        code += i_lut[icmp]
    else:
        icmps = np.array([256 * 257 + 256], dtype=np.int64)
    return _Service(code, [len(protos), sports.count, dports.count, len(icmps)], protos, icmps, dst_port)


FrameSource = pl.DataFrame | Callable[[], pl.DataFrame]


def _load(source: FrameSource) -> tuple[pl.DataFrame, tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], I64,
                                                          list[str]]]:
    frame = ensure_frame(source() if callable(source) else source)
    return frame, _dictionary(frame)


def reduce_frame(
    source: FrameSource,
    states: Sequence[ClusterState],
    progress: Progress | None = None,
    timings: Timings | None = None,
) -> Keyed:
    """Group the rows of a flow frame into keys that every state in `states` decides alike.

    `source` is the frame or a function that reads it. Native work (reading, dictionary
    encoding, per-row lookups) runs in a worker thread while Python works out what the rules
    test and the address classes: polars and numpy release the GIL."""
    progress = progress or NoProgress()
    timings = timings or Timings()
    progress.phase("reading and classifying flows", None)
    with ThreadPoolExecutor(1, thread_name_prefix="whatif") as pool:
        loading = pool.submit(_load, source)
        tests = collect_tests(states)
        sports, dports = port_classes(tests.src_ports), port_classes(tests.dst_ports)
        service_job = pool.submit(lambda: _service(loading.result()[0], sports, dports))
        timings.lap("rule tests")
        frame, (s_code, d_code, codes, texts) = loading.result()
        timings.lap("read and encode flows")
        addrs = address_classes(texts, states, tests)
        timings.lap("address classes")
        service = service_job.result()
        timings.lap("service keys")

    # per dictionary code: its distinct-address index, class and node ("no address" last)
    size = int(codes.max()) + 2 if len(codes) else 1
    index_by_code = np.full(max(size, int(s_code.max(initial=0)) + 1, int(d_code.max(initial=0)) + 1),
                            len(texts), dtype=np.int64)
    index_by_code[codes] = np.arange(len(texts))
    cls_by_code = np.append(addrs.cls, INVALID).astype(np.uint64)[index_by_code]
    radix = [addrs.count, addrs.count, 2, *service.radix]
    if np.prod(np.array(radix, dtype=np.float64)) < 2.0**63:
        # key = ((src class * C + dst class) * 2 + same node) * S + service
        key = cls_by_code[s_code]
        key *= np.uint64(addrs.count)
        key += cls_by_code[d_code]
        key *= np.uint64(2)
        if addrs.factor_nodes:
            node_by_code = np.append(addrs.node, -1).astype(np.int32)[index_by_code]
            s_node = node_by_code[s_code]
            key += ((s_node == node_by_code[d_code]) & (s_node >= 0)).view(np.uint8)
            del s_node
        key *= np.uint64(service.size)
        key += service.code
        timings.lap("row keys")
        encoded = pc.dictionary_encode(pa.array(key))  # hash-based: distinct keys and per-row indices
        del key
        key_idx = encoded.indices.to_numpy().astype(np.int32, copy=False)
        keys = encoded.dictionary.to_numpy()
        decoded = _decode(keys, radix)
    else:  # too many classes to pack in 64 bits: number the distinct tuples instead
        node = np.append(addrs.node, -1)[index_by_code]
        same = (node[s_code] == node[d_code]) & (node[s_code] >= 0) & addrs.factor_nodes
        cols = pl.DataFrame({"f0": cls_by_code[s_code], "f1": cls_by_code[d_code], "f2": same.astype(np.uint64),
                             "f3": service.code})
        table = cols.unique().sort(cols.columns).with_row_index("key")
        key_idx = cols.join(table, on=cols.columns, how="left", maintain_order="left")["key"].to_numpy() \
            .astype(np.int32)
        keys = table["key"].to_numpy().astype(np.uint64)
        parts = [table[f"f{i}"].to_numpy().astype(np.uint64) for i in range(4)]
        decoded = [p.astype(np.int64) for p in parts[:3]] + _decode(parts[3], service.radix)
        timings.lap("row keys")
    timings.lap("keys")

    flows = _representatives(decoded, addrs, sports, dports, service.protos, service.icmps)
    timings.lap("representatives")
    return Keyed(frame, key_idx, s_code, d_code, service.dst_port, index_by_code, keys, flows, decoded[0],
                 decoded[1], addrs, sports, dports)


def _decode(keys: U64, radix: list[int]) -> list[I64]:
    out: list[I64] = []
    rest = keys.copy()
    for base in reversed(radix):
        out.append((rest % np.uint64(base)).astype(np.int64))
        rest = rest // np.uint64(base)
    return out[::-1]


def _representatives(
    decoded: list[I64], addrs: AddressClasses, sports: PortClasses, dports: PortClasses,
    p_values: I64, i_values: I64,
) -> list[Flow | None]:
    s_cls, d_cls, same, p_id, sp, dp, i_id = decoded
    pairs: dict[tuple[int, int, int], tuple[int, int] | None] = {}
    flows: list[Flow | None] = []
    for k in range(len(s_cls)):
        sc, dc, sm = int(s_cls[k]), int(d_cls[k]), int(same[k])
        proto = int(p_values[p_id[k]])
        if sc == INVALID or dc == INVALID or proto > 255 or addrs.version[sc] != addrs.version[dc]:
            flows.append(None)
            continue
        pair = pairs.get((sc, dc, sm), (-1, -1))
        if pair == (-1, -1):
            pair = pairs[(sc, dc, sm)] = _pair(addrs.reps[sc], addrs.reps[dc], bool(sm))
        if pair is None:
            flows.append(None)
            continue
        icmp = int(i_values[i_id[k]])
        icmp_type, icmp_code = icmp // 257, icmp % 257
        src_ip, dst_ip = addrs.ips[pair[0]], addrs.ips[pair[1]]
        assert src_ip is not None and dst_ip is not None
        flows.append(Flow(
            src_ip, dst_ip, proto, sports.rep[sp[k]], dports.rep[dp[k]],
            None if icmp_type == 256 else icmp_type, None if icmp_code == 256 else icmp_code,
        ))
    return flows


def _pair(src: dict[int, int], dst: dict[int, int], same: bool) -> tuple[int, int] | None:
    """Addresses of the two classes with the required node relation (they exist: a row had it)."""
    if same:
        common = sorted(n for n in src.keys() & dst.keys() if n >= 0)
        return (src[common[0]], dst[common[0]]) if common else None
    for ns in sorted(src):
        for nd in sorted(dst):
            if ns < 0 or ns != nd:
                return src[ns], dst[nd]
    return None
