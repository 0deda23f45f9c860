"""A small FSA container: an epsilon-free acceptor over pdf ids with log-probability weights.

Arrays: ``src``, ``dst``, ``label`` (pdf id, 0-based), ``logw`` (natural-log weight, log semiring);
``start`` (state id) and ``final`` (per-state log final weight, ``-inf`` = not final).
Conversions: to/from ``kaldifst.StdVectorFst`` (tropical, weight = -logw, label = pdf + 1 since 0 is
epsilon there) and to a ``k2.Fsa`` (label = pdf, a super-final state reached by ``-1`` arcs).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

__all__ = ["Fsa", "concat_fsas"]


class Fsa:
    """Epsilon-free weighted acceptor; labels are pdf ids (>= 0)."""

    def __init__(
        self,
        num_states: int,
        src: Sequence[int],
        dst: Sequence[int],
        label: Sequence[int],
        logw: Sequence[float],
        start: int = 0,
        final: Optional[Sequence[float]] = None,
    ) -> None:
        self.num_states = int(num_states)
        self.src = np.asarray(src, dtype=np.int64).reshape(-1)
        self.dst = np.asarray(dst, dtype=np.int64).reshape(-1)
        self.label = np.asarray(label, dtype=np.int64).reshape(-1)
        self.logw = np.asarray(logw, dtype=np.float64).reshape(-1)
        self.start = int(start)
        if final is None:
            final = np.zeros(self.num_states)  # every state final with probability 1
        self.final = np.asarray(final, dtype=np.float64).reshape(-1)
        self.validate()

    # ------------------------------------------------------------------ basics
    @property
    def num_arcs(self) -> int:
        return int(self.src.shape[0])

    def validate(self) -> None:
        n = self.num_arcs
        for name in ("dst", "label", "logw"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"Fsa: {name} has {getattr(self, name).shape[0]} entries, src has {n}")
        if self.final.shape[0] != self.num_states:
            raise ValueError("Fsa: final must have one entry per state")
        if n and (self.src.min() < 0 or self.src.max() >= self.num_states
                  or self.dst.min() < 0 or self.dst.max() >= self.num_states):
            raise ValueError("Fsa: arc state out of range")
        if n and self.label.min() < 0:
            raise ValueError("Fsa: labels must be pdf ids >= 0 (no epsilons)")
        if not (0 <= self.start < max(self.num_states, 1)):
            raise ValueError("Fsa: bad start state")

    def max_label(self) -> int:
        return int(self.label.max()) if self.num_arcs else -1

    def __repr__(self) -> str:
        return f"Fsa(states={self.num_states}, arcs={self.num_arcs}, start={self.start})"

    def to_str(self) -> str:
        """OpenFst-like text (log weights, natural log)."""
        lines = [f"{s} {d} {l} {w:.6g}" for s, d, l, w in zip(self.src, self.dst, self.label, self.logw)]
        lines += [f"{s} {f:.6g}" for s, f in enumerate(self.final) if np.isfinite(f)]
        return "\n".join(lines)

    def min_path_length(self) -> float:
        """Fewest arcs on a path from start to a final state (inf if none): the fewest frames."""
        inf = float("inf")
        dist = np.full(self.num_states, inf)
        dist[self.start] = 0
        frontier = [self.start]
        order = np.argsort(self.src, kind="stable")
        ssrc = self.src[order]
        sdst = self.dst[order]
        starts = np.searchsorted(ssrc, np.arange(self.num_states + 1))
        while frontier:
            nxt = []
            for s in frontier:
                for d in sdst[starts[s]:starts[s + 1]]:
                    if dist[d] == inf:
                        dist[d] = dist[s] + 1
                        nxt.append(int(d))
            frontier = nxt
        fin = np.isfinite(self.final)
        return float(dist[fin].min()) if fin.any() else inf

    # ------------------------------------------------------------ conversions
    def to_kaldifst(self):
        import kaldifst

        fst = kaldifst.StdVectorFst()
        for _ in range(self.num_states):
            fst.add_state()
        fst.start = self.start
        for s, d, l, w in zip(self.src.tolist(), self.dst.tolist(), self.label.tolist(), self.logw.tolist()):
            fst.add_arc(s, kaldifst.StdArc(l + 1, l + 1, -w, d))
        for s, f in enumerate(self.final.tolist()):
            if np.isfinite(f):
                fst.set_final(s, -f)
        return fst

    @classmethod
    def from_kaldifst(cls, fst) -> "Fsa":
        """Reads an epsilon-free acceptor (ilabel = pdf + 1); tropical weights become log weights."""
        import kaldifst

        n = fst.num_states
        src: List[int] = []
        dst: List[int] = []
        lab: List[int] = []
        lw: List[float] = []
        final = np.full(n, -np.inf)
        for s in range(n):
            it = kaldifst.ArcIterator(fst, s)
            while not it.done:
                a = it.value
                if a.ilabel == 0:
                    raise ValueError("Fsa.from_kaldifst: epsilon arcs are not supported")
                src.append(s)
                dst.append(a.nextstate)
                lab.append(a.ilabel - 1)
                lw.append(-a.weight.value)
                it.next()
            fv = fst.final(s).value
            if np.isfinite(fv):
                final[s] = -fv
        return cls(n, src, dst, lab, lw, start=fst.start, final=final)

    def to_k2(self, init_logprobs: Optional[np.ndarray] = None):
        """k2.Fsa: labels = pdf ids, super-final state reached by label -1 arcs carrying the final weight.

        If ``init_logprobs`` (per-state initial log-probabilities) is given, a new start state is added
        whose arcs are those of every state j weighted by init(j) (epsilon removal of start -> j), so the
        k2 graph defines the same distribution as "alpha(0) = init".
        """
        import k2
        import torch

        src, dst, lab, lw = self.src, self.dst, self.label, self.logw
        n = self.num_states
        if init_logprobs is not None:
            init_logprobs = np.asarray(init_logprobs, dtype=np.float64)
            keep = np.isfinite(init_logprobs[src])
            new_start = n
            src = np.concatenate([src, np.full(int(keep.sum()), new_start)])
            dst = np.concatenate([dst, self.dst[keep]])
            lab = np.concatenate([lab, self.label[keep]])
            lw = np.concatenate([lw, self.logw[keep] + init_logprobs[self.src[keep]]])
            final = np.concatenate([self.final, [np.logaddexp.reduce(init_logprobs + self.final)]])
            n = n + 1
            start = new_start
        else:
            final = self.final
            start = self.start
        # k2: start state must be 0, final state last; renumber: start -> 0, others shifted.
        perm = np.empty(n, dtype=np.int64)
        others = [s for s in range(n) if s != start]
        perm[start] = 0
        perm[np.asarray(others, dtype=np.int64)] = np.arange(1, n)
        super_final = n
        fin_states = np.nonzero(np.isfinite(final))[0]
        all_src = np.concatenate([perm[src], perm[fin_states]])
        all_dst = np.concatenate([perm[dst], np.full(len(fin_states), super_final)])
        all_lab = np.concatenate([lab, np.full(len(fin_states), -1)])
        all_w = np.concatenate([lw, final[fin_states]])
        order = np.lexsort((all_dst, all_src))  # k2 wants arcs sorted by source state
        arcs = torch.tensor(
            np.stack([all_src[order], all_dst[order], all_lab[order]], axis=1), dtype=torch.int32
        )
        scores = torch.tensor(all_w[order], dtype=torch.float32)
        arcs = torch.cat([arcs, scores.view(-1).contiguous().view(torch.int32).unsqueeze(1)], dim=1)
        fsa = k2.Fsa(arcs)
        return fsa


def concat_fsas(fsas: Sequence[Fsa]):
    """Block-diagonal union: returns (src, dst, label, logw, seq, final, start_states, state_offsets)."""
    offsets = np.zeros(len(fsas) + 1, dtype=np.int64)
    for i, f in enumerate(fsas):
        offsets[i + 1] = offsets[i] + f.num_states
    src = np.concatenate([f.src + offsets[i] for i, f in enumerate(fsas)]) if fsas else np.zeros(0, np.int64)
    dst = np.concatenate([f.dst + offsets[i] for i, f in enumerate(fsas)]) if fsas else np.zeros(0, np.int64)
    lab = np.concatenate([f.label for f in fsas]) if fsas else np.zeros(0, np.int64)
    lw = np.concatenate([f.logw for f in fsas]) if fsas else np.zeros(0)
    seq = np.concatenate([np.full(f.num_arcs, i, dtype=np.int64) for i, f in enumerate(fsas)]) if fsas else np.zeros(0, np.int64)
    final = np.concatenate([f.final for f in fsas]) if fsas else np.zeros(0)
    starts = np.array([f.start + offsets[i] for i, f in enumerate(fsas)], dtype=np.int64)
    return src, dst, lab, lw, seq, final, starts, offsets
