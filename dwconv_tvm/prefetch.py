"""Software prefetch of a register tile's upcoming input rows, as a rewrite of a scheduled module.

Layers whose input and output do not fit the caches (MobileNetV2 at batch 8) read their input
from DRAM, and a register tile reads it in an order the hardware prefetchers do not follow: per
channel vector, a few pixels of each of several rows, 0.5-2 KB apart. A plain copy of the same
bytes streams at 2-4x the rate. The CPU template marks the channel loop of its register tile
with `ANNOTATION` (a knob); before compilation, `apply` puts at the top of that loop a prefetch
into L2 of the lines that a tile further right (`schedules.cpu.PREFETCH_DISTANCE`) will read and
the tiles before it have not: its new rows (the upper ones were read by the previous row tile)
x its new columns, for the channel vectors of this iteration.

TVM 0.27 has no schedule primitive that emits a prefetch, so the template records its decision
as a loop annotation (which tuning records keep in their traces) and this rewrite, run before
every build of a scheduled module (`build.build_executable`, the tuner's builders), inserts the
calls.
"""

from __future__ import annotations

ANNOTATION = "dwconv_tvm.prefetch_input"
# LLVM's locality hint: 2 is `prefetcht1` on x86, into L2, which leaves L1 to the window the tile
# is reading (into L1, 3, ran the same on znver4; both hints gain only from DRAM).
LOCALITY = 2


def plan(rows_from: int, rows: int, cols_from: int, cols: int, vectors: int, lanes: int) -> list[int]:
    """The annotation's value: input rows `rows_from` .. `+rows` and columns `cols_from` ..
    `+cols` relative to the tile's first input pixel, `vectors` channel vectors of `lanes` input
    channels each."""
    return [rows_from, rows, cols_from, cols, vectors, lanes]


def marked(mod) -> bool:
    """Whether a scheduled module asks for prefetches (`apply` has something to insert)."""
    return bool(_annotated_loops(mod["main"].body))


def apply(mod):
    """`mod` with the prefetches its annotated loops ask for (unchanged if none is annotated).

    Args:
        mod: A scheduled IRModule (`s_tir` blocks), whose `main` reads the input (NHWC) as
            its first parameter.

    Returns:
        The rewritten IRModule.
    """
    from tvm import s_tir

    func = mod["main"]
    loops = _annotated_loops(func.body)
    if not loops:
        return mod
    data = func.params[0]  # TVM 0.27: parameters are the buffers
    sch = s_tir.Schedule(mod)
    for loop in loops:
        sch.state.replace(sch.get_sref(_loop_rv(sch, loop)), _with_prefetch(loop, data))
    return sch.mod


def _children(stmt) -> list:
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        return [stmt.block.body] + ([stmt.block.init] if stmt.block.init is not None else [])
    if isinstance(stmt, tirx.For):
        return [stmt.body]
    if isinstance(stmt, tirx.IfThenElse):
        return [s for s in (stmt.then_case, stmt.else_case) if s is not None]
    return []


def _walk(stmt, parents: tuple = ()):
    """Every statement under `stmt` with the loops enclosing it (outermost first)."""
    from tvm import tirx

    yield stmt, parents
    inner = parents + (stmt,) if isinstance(stmt, tirx.For) else parents
    for child in _children(stmt):
        yield from _walk(child, inner)


def _annotated_loops(body) -> list:
    from tvm import tirx

    return [s for s, _ in _walk(body) if isinstance(s, tirx.For) and ANNOTATION in s.annotations]


def _loop_rv(sch, loop):
    """The schedule's handle of `loop` (found through a block under it)."""
    from tvm import s_tir

    for stmt, _ in _walk(loop.body):
        if isinstance(stmt, s_tir.SBlockRealize):
            for rv in sch.get_loops(sch.get_sblock(stmt.block.name_hint)):
                if sch.get(rv).same_as(loop):
                    return rv
    raise ValueError(f"No block under the loop marked {ANNOTATION}.")


def _tile_origin(loop, data):
    """Indices of the first input element the tile under `loop` reads, in the loop variables
    around it (and `loop`'s own): the minimum of a block's read region of `data`, with the
    loops inside `loop` at 0."""
    import tvm
    from tvm import s_tir

    for stmt, loops in _walk(loop.body):
        if not isinstance(stmt, s_tir.SBlockRealize):
            continue
        region = next((r for r in stmt.block.reads if r.source.same_as(data)), None)
        if region is None:
            continue
        analyzer = tvm.sym.Analyzer()
        for iv, value in zip(stmt.block.iter_vars, stmt.iter_values):
            analyzer.bind(iv.var, value)
        for inner in loops:
            analyzer.bind(inner.loop_var, 0)
        # Simplifying substitutes the bound variables (the block's, then the inner loops' in theirs).
        return [analyzer.simplify(r.min) for r in region.region]
    raise ValueError(f"No block under the loop marked {ANNOTATION} reads {data.name}.")


def _with_prefetch(loop, data):
    """`loop` with the prefetches of its annotation ahead of its body, annotation dropped."""
    import tvm
    from tvm import s_tir, tirx

    rows_from, rows, cols_from, cols, vectors, lanes = (int(v) for v in loop.annotations[ANNOTATION])
    n, y, x, c = _tile_origin(loop, data)
    height, width, channels = (int(d) for d in data.shape[1:])
    pr, pc, pv = (tirx.Var(name, "int32") for name in ("prefetch_row", "prefetch_col", "prefetch_vector"))

    def clamp(value, size):  # within the input: the tile ahead may be past its last row or column
        return tirx.max(tirx.min(value, size - 1), 0)

    address = tirx.address_of(tirx.BufferLoad(data, [n, clamp(y + rows_from + pr, height),
                                                     clamp(x + cols_from + pc, width),
                                                     clamp(c + pv * lanes, channels)]))
    call = tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, tvm.tirx.const(0, "uint32"),
                                 tvm.tirx.const(LOCALITY, "uint32"), tvm.tirx.const(1, "uint32"))
    body = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "prefetch", tirx.Evaluate(call)))
    for var, extent in ((pv, vectors), (pc, cols), (pr, rows)):
        body = tirx.For(var, 0, extent, tirx.ForKind.UNROLLED, body)
    annotations = {k: v for k, v in loop.annotations.items() if k != ANNOTATION}
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, tirx.SeqStmt([body, loop.body]),
                    loop.thread_binding, annotations, loop.step)
