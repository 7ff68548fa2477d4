"""One batch cache shared by several requests on a transformers model: the rows of continuous batching.

Each member (one request) owns a block of rows: its personas, plus the reference row under guidance. A member's
prompts are read by forwards of its own (:meth:`TransformersSharedBatch.join`: the very prefill a lone request's
:class:`~.hf.TransformersBatch` runs, left-padded to the member's longest prompt, in chunks of
``prefill_chunk`` columns that the scheduler interleaves with the others' steps) and its cache is then merged into
the shared one, between steps. :meth:`~TransformersSharedBatch.step` feeds one token to every row of every member
in one forward. A member with no token at a step (its request was not ready in time) gets a masked column: its
rows are computed and ignored, and no later query attends to that column. Leaving drops the member's rows and the
leading columns no remaining row attends to.

Rows of different lengths are left-padded; each row's position ids count its own attended columns, so neither
padding nor masked columns change any row's positions.

**Exactness.** A row's linear layers, norms and position embeddings do not depend on the other rows where the
matrix kernels give each row the same bits whatever the batch (oneDNN's prepacked fp32 kernels on a CPU,
:mod:`..cpu_kernels`, do; MKL's default ones and cuBLAS do not promise it). Attention does: its sums over the
columns run in vector lanes, so the same keys behind more left padding are summed in another order. On a CPU with
prepacked weights each member's attention is therefore computed over its own columns only (from the first one it
attends to: exactly the keys, mask and shapes it has alone), and a member's logits are bitwise those of its lone
batch (a member that missed a step has a masked column of its own and is exact only to float rounding). Elsewhere
the whole batch attends at once, one call per layer, and a member's logits equal its lone batch's to float rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..options import DecodingStats

if TYPE_CHECKING:  # hf builds this module's batch: importing it here would be a cycle
    from .hf import TransformersBackend


GROUPS = "persona_judge_groups"
"""The forward's keyword argument naming each member's (rows, first column, masked) for per-member attention."""


def _install_per_member_attention() -> bool:
    """Wrap transformers' ``sdpa`` attention (once per process) so that a forward passing :data:`GROUPS` attends
    member by member; every other forward calls the wrapped function unchanged. False where there is none."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    except ImportError:  # pragma: no cover - another transformers layout: whole-batch attention
        return False
    try:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    except KeyError:  # pragma: no cover
        return False
    if getattr(sdpa, "per_member", False):
        return True

    def per_member_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        groups = kwargs.pop(GROUPS, None)
        if groups is None:
            return sdpa(module, query, key, value, attention_mask, **kwargs)
        outputs = []
        for rows, first, masked in groups:
            # What the member's lone batch passes: its own columns, and no mask when it has no padding.
            mask = attention_mask[rows, :, :, first:] if masked and attention_mask is not None else None
            out, _ = sdpa(module, query[rows], key[rows, :, first:], value[rows, :, first:], mask, **kwargs)
            outputs.append(out)
        return torch.cat(outputs), None

    per_member_sdpa.per_member = True  # type: ignore[attr-defined]
    AttentionInterface.register("sdpa", per_member_sdpa)
    return getattr(ALL_ATTENTION_FUNCTIONS["sdpa"], "per_member", False)  # unless a local override shadows it


def exact_per_member(backend: TransformersBackend) -> bool:
    """Whether ``backend``'s shared batch attends member by member (see the module's note on exactness): a CPU
    model with prepacked weights and ``sdpa`` attention."""
    from ..cpu_kernels import is_prepacked

    model = backend.model
    if backend.device.type != "cpu" or not is_prepacked(model):
        return False
    return getattr(model.config, "_attn_implementation", None) == "sdpa" and _install_per_member_attention()


def supports_shared_batch(backend: TransformersBackend) -> bool:
    """Whether ``backend``'s cache is one plain ``DynamicLayer`` per layer (no sliding window, no offloading):
    what :class:`TransformersSharedBatch` knows how to merge and split by rows."""
    layers = getattr(backend.new_cache(), "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class SharedRows:
    """One member's block of rows in the shared cache: rows ``start .. start + count - 1``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.start = 0

    @property
    def span(self) -> slice:
        return slice(self.start, self.start + self.count)


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    """``tensor`` with ``columns`` zero columns prepended along ``dim``."""
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class TransformersSharedBatch:
    """The rows of every member, in one left-padded ``DynamicCache`` with one attention mask (rows x columns)."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self.cache: DynamicCache | None = None
        self.attention: torch.Tensor | None = None
        """(rows, columns) of 1 where a row attends to a column, 0 for padding and masked columns."""
        self.members: list[SharedRows] = []
        self.exact = exact_per_member(backend)
        """Whether each member attends over its own columns only (bitwise its lone batch's logits)."""

    @property
    def rows(self) -> int:
        return 0 if self.attention is None else int(self.attention.shape[0])

    @property
    def columns(self) -> int:
        return 0 if self.attention is None else int(self.attention.shape[1])

    # -- joining: a forward of the newcomer's own, then a merge ------------------------------------------------

    def join(self, prompts: list[list[int]], stats: DecodingStats) -> tuple[SharedRows, torch.Tensor]:
        """Read ``prompts`` in forwards of their own and add their rows; (their block, their next-token logits)."""
        batch = self.backend.batch(prompts, 0, stats)
        logits = batch.prefill()  # the same forwards a lone request runs
        return self.add(batch), logits

    def add(self, batch: Any) -> SharedRows:
        """Add the rows of a lone :class:`~.hf.TransformersBatch` whose prompts were read (the scheduler reads them
        chunk by chunk between steps, :meth:`~.hf.TransformersBatch.prefill_chunks`); their block."""
        member = SharedRows(len(batch.rows))
        self._merge(member, batch.cache, batch.attention_mask)
        return member

    def _merge(self, member: SharedRows, cache: DynamicCache, attention: torch.Tensor) -> None:
        if self.cache is None or self.attention is None:
            self.cache, self.attention, self.members = cache, attention.clone(), [member]
            return
        width = max(self.columns, attention.shape[1])
        mine, theirs = width - self.columns, width - attention.shape[1]
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, mine, 2), _pad_left(new.keys, theirs, 2)], dim=0)
            old.values = torch.cat([_pad_left(old.values, mine, 2), _pad_left(new.values, theirs, 2)], dim=0)
        self.attention = torch.cat([_pad_left(self.attention, mine, 1), _pad_left(attention, theirs, 1)], dim=0)
        member.start = sum(m.count for m in self.members)
        self.members.append(member)

    # -- leaving ---------------------------------------------------------------------------------------------

    def leave(self, member: SharedRows) -> None:
        """Drop ``member``'s rows, then the leading columns no remaining row attends to."""
        if member not in self.members:
            return
        self.members.remove(member)
        if not self.members:
            self.cache = self.attention = None
            return
        assert self.cache is not None and self.attention is not None
        keep = torch.tensor([r for m in self.members for r in range(m.start, m.start + m.count)],
                            device=self.attention.device)
        start = 0
        for m in self.members:
            m.start, start = start, start + m.count
        attention = self.attention.index_select(0, keep)
        first = int(attention.any(dim=0).long().argmax())  # the first column some row attends to
        self.attention = attention[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, keep)[:, :, first:]
            layer.values = layer.values.index_select(0, keep)[:, :, first:]

    # -- one step for every row --------------------------------------------------------------------------------

    def step(self, feeds: dict[SharedRows, int]) -> torch.Tensor:
        """Feed each member in ``feeds`` its token (the others a masked column); every row's next-token logits,
        ``(rows, vocab)``, unchecked (each member checks its own rows)."""
        assert self.cache is not None and self.attention is not None
        ids = torch.zeros(self.rows, 1, dtype=torch.long)
        column = torch.zeros(self.rows, 1, dtype=torch.long)
        for member, token in feeds.items():
            ids[member.span] = token
            column[member.span] = 1
        self.attention = torch.cat([self.attention, column.to(self.attention.device)], dim=1)
        signature = self.backend.signature
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.backend.device),
            signature.cache_argument: self.cache,
            "use_cache": True,
            "attention_mask": self.attention,
        }
        if signature.keeps_logits:
            kwargs["logits_to_keep"] = 1
        if signature.takes_positions:
            kwargs["position_ids"] = (self.attention.cumsum(-1) - 1).clamp(min=0)[:, -1:]
        if self.exact:
            kwargs[GROUPS] = self._groups()
        return self.backend.model(**kwargs).logits[:, -1]

    def _groups(self) -> list[tuple[slice, int, bool]]:
        """Each member's rows, the first column one of them attends to, and whether any of its columns from
        there is masked (padding or a missed step): what its lone batch's attention would see."""
        assert self.attention is not None
        groups = []
        for member in self.members:
            attended = self.attention[member.span]
            first = int(attended.any(dim=0).long().argmax())
            groups.append((member.span, first, not bool(attended[:, first:].all())))
        return groups


__all__ = ["SharedRows", "TransformersSharedBatch", "supports_shared_batch"]
