"""The builder's decoder run directly with onnxruntime, over one KV cache shared by every running
sequence (the CPU engine; CUDA models keep onnxruntime-genai's Generator, static_batches.py).

The cache is one buffer per layer for keys and one for values, shaped [rows, kv_heads, context,
head]. Rows 0..n-1 are the running sequences, kept contiguous. A decode step binds rows [:n] as
both the past and the present of every layer: GroupQueryAttention then works in its shared-buffer
mode and writes each row's new keys and values in place at that row's own length (the mask's row
sum), so no cache is copied per step and rows of different lengths decode together. A new sequence
prefills alone (batch 1) into row n, in chunks, and joins the decode rows when its prompt is done;
GroupQueryAttention refuses prompt chunks in the same run as decode rows. A leaving row is filled
by the last running row (one copy of that row's used cache).

The buffers are anonymous memory maps: pages are committed as tokens are written, so a cache as
long as the context costs address space, not memory (numpy's allocator would advise huge pages and
commit whole buffers), and it never has to grow (a reallocation stalls for seconds on big models).
When a sequence leaves, the pages beyond what each row still holds go back to the kernel, so the
memory used follows the running sequences' lengths (kv_budget.py bounds their sum).
"""

from __future__ import annotations

import importlib
import mmap
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_server.genai import disable_telemetry
from onnx_server.model_config import ModelConfig

if TYPE_CHECKING:
    import onnxruntime as ort


# Linux's value on x86-64 and arm64 (asm-generic/mman-common.h); Python's mmap names it from 3.12.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class LazyBuffer:
    """float32 zeros whose pages are committed only when written, and can be given back."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        count = int(np.prod(shape))
        # No swap reservation: one layer's buffer for a long context and many rows can exceed the
        # machine's memory, which the kernel's overcommit heuristic refuses, though only written
        # pages are ever used.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        self._memory = mmap.mmap(-1, max(count * 4, 1), flags=flags)
        self.array = np.frombuffer(self._memory, dtype=np.float32, count=count).reshape(shape)

    def forget(self, start: int, end: int) -> None:
        """Give back the whole pages within bytes [start, end): they read as zeros again."""
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        last = end // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._memory.madvise(mmap.MADV_DONTNEED, first, last - first)


def cpu_session(config: ModelConfig, threads: int, spinning: bool = True) -> ort.InferenceSession:
    disable_telemetry()  # before onnxruntime initialises (genai.py)
    ort: Any = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle intra-op threads spin (onnxruntime's default) unless told to sleep. Measured on the large
    # benchmark model, 2 cores, two servers side by side in ABBA order: spinning served one client
    # 4.8% and 16 clients 6.2% more tokens/s; a step alone took 17.4 ms spinning, 19.3 ms sleeping
    # (onnxruntime-genai: 16.3). Sleeping threads suit a node whose other busy processes share the
    # cores: a step beside two processes waking every 15 ms for 0.3 ms went from 15.3 to 18.7 ms with
    # spinning, and stayed at 15.2 ms without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(config.decoder_path), options, providers=["CPUExecutionProvider"])


class SlotDecoder:
    """Sequences (any hashable key) in rows of one shared KV cache; at most one prefilling."""

    def __init__(self, session: ort.InferenceSession, config: ModelConfig, rows: int) -> None:
        self.session, self.config, self.rows = session, config, rows
        shape = (rows, config.kv_heads, config.context_length, config.head_size)
        self._buffers = [LazyBuffer(shape) for _ in range(2 * config.layers)]
        self._keys = [b.array for b in self._buffers[: config.layers]]
        self._values = [b.array for b in self._buffers[config.layers :]]
        self._lengths = np.zeros(rows, np.int64)  # tokens in the cache, per row
        self._logits = np.zeros((rows, 1, config.vocab_size), np.float32)
        self._order: list[Any] = []  # the running sequences, by row
        self.prefilling: Any = None  # the sequence in row len(_order), if any
        self._bindings: dict[int, Any] = {}  # decode bindings per running count

    @property
    def running(self) -> list[Any]:
        """The decoding sequences in row order (the order of decode's tokens and logits)."""
        return list(self._order)

    @property
    def free_rows(self) -> int:
        return self.rows - len(self._order) - (self.prefilling is not None)

    def length(self, sequence: Any) -> int:
        return int(self._lengths[self._row(sequence)])

    @property
    def lengths(self) -> list[int]:
        """The running sequences' lengths, in `running` order."""
        return self._lengths[: len(self._order)].tolist()

    def _row(self, sequence: Any) -> int:
        if sequence is self.prefilling:
            return len(self._order)
        return self._order.index(sequence)

    def _bind_cache(self, binding: Any, first_row: int, rows: int) -> None:
        c = self.config
        shape = (rows, c.kv_heads, c.context_length, c.head_size)
        names = zip(
            self._keys + self._values, c.past_keys + c.past_values, c.present_keys + c.present_values, strict=True
        )
        for buffer, past, present in names:
            pointer = buffer.ctypes.data + first_row * buffer.strides[0]
            binding.bind_input(past, "cpu", 0, np.float32, shape, pointer)
            binding.bind_output(present, "cpu", 0, np.float32, shape, pointer)  # the same memory: in place

    # --- prefill ----------------------------------------------------------------------------

    def begin(self, sequence: Any) -> None:
        if self.prefilling is not None or not self.free_rows:
            raise RuntimeError("no free row")
        self.prefilling = sequence
        self._lengths[len(self._order)] = 0

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Run one chunk of the prefilling sequence's prompt (batch 1); the logits of its last
        position. Chunks of 2 or more tokens give the same cache as one whole prompt; a 1-token
        chunk takes attention's decode path, which differs in the last bits."""
        row = len(self._order)
        past = int(self._lengths[row])
        c = self.config
        if past + len(ids) >= c.context_length:
            raise ValueError("the prompt does not fit the context")
        # bind_cpu_input does not keep its array alive: these names hold them until the run ends.
        input_ids = np.asarray([ids], np.int64)
        mask = np.ones((1, past + len(ids)), np.int64)
        binding = self.session.io_binding()
        binding.bind_cpu_input(c.input_ids, input_ids)
        binding.bind_cpu_input(c.attention_mask, mask)
        binding.bind_output(c.logits, "cpu")  # bound first: get_outputs() follows binding order
        self._bind_cache(binding, row, 1)
        self.session.run_with_iobinding(binding)
        self._lengths[row] += len(ids)
        # The builder's decoder returns every position's logits unless its LM head was pruned.
        return binding.get_outputs()[0].numpy()[0, -1].copy()

    def join(self) -> None:
        """The prefilling sequence decodes with the others from the next step on."""
        assert self.prefilling is not None
        self._order.append(self.prefilling)
        self.prefilling = None

    # --- decode -----------------------------------------------------------------------------

    def decode(self, tokens: list[int]) -> np.ndarray:
        """One step for every running row, each given its next input token (in `running` order);
        logits [n, vocab], a view the next step overwrites."""
        n = len(self._order)
        c = self.config
        lengths = self._lengths[:n]
        width = int(lengths.max()) + 1
        if width > c.context_length:
            raise ValueError("a sequence outgrew the context")
        mask = (np.arange(width)[None, :] <= lengths[:, None]).astype(np.int64)
        input_ids = np.asarray(tokens, np.int64).reshape(n, 1)
        binding = self._bindings.get(n)
        if binding is None:  # rows [:n] and the logits stay bound for as long as n does
            binding = self._bindings[n] = self.session.io_binding()
            self._bind_cache(binding, 0, n)
            binding.bind_output(c.logits, "cpu", 0, np.float32, (n, 1, c.vocab_size), self._logits.ctypes.data)
        binding.bind_cpu_input(c.input_ids, input_ids)
        binding.bind_cpu_input(c.attention_mask, mask)
        self.session.run_with_iobinding(binding)
        lengths += 1
        return self._logits[:n, 0]

    # --- leaving ----------------------------------------------------------------------------

    def _move(self, source: int, target: int) -> None:
        used = int(self._lengths[source])
        for buffer in self._keys + self._values:
            buffer[target, :, :used] = buffer[source, :, :used]
        self._lengths[target] = used
        self._lengths[source] = 0

    def _trim(self, row: int) -> None:
        """Give back the row's pages beyond the tokens it holds (each kv head's segment)."""
        c = self.config
        token_bytes = c.head_size * 4
        segment = c.context_length * token_bytes
        used = int(self._lengths[row]) * token_bytes
        for buffer in self._buffers:
            row_start = row * buffer.array.strides[0]
            for head in range(c.kv_heads):
                start = row_start + head * segment
                buffer.forget(start + used, start + segment)

    def release(self, sequence: Any) -> None:
        """Free a sequence's row at once. The last running row moves into it, and a prefilling row
        moves down behind the running ones, so rows stay contiguous."""
        if sequence is self.prefilling:
            self.prefilling = None
            self._lengths[len(self._order)] = 0
            self._trim(len(self._order))
            return
        row = self._order.index(sequence)
        last = len(self._order) - 1
        if row != last:
            self._move(last, row)
            self._order[row] = self._order[last]
        else:
            self._lengths[row] = 0
        self._order.pop()
        if self.prefilling is not None:
            self._move(last + 1, last)
        for changed in {row, last, last + 1}:
            if changed < self.rows:
                self._trim(changed)

    def clear(self) -> None:
        self._order.clear()
        self.prefilling = None
        self._lengths[:] = 0
        for row in range(self.rows):
            self._trim(row)
