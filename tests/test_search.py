"""ValueSet, the batched pointer search, through both engines: the compiled extension and numpy."""
import errno
import mmap
import os
import shutil
import signal
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pykd_ext.search as search
from pykd_ext.search import ValueSet
from pykd_ext.targets.base import ObjectHeaders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, for child processes
COMPILED_MISSING = "the compiled engine is not built here (python3 -m pip install -e . with a C compiler builds it)"


@pytest.fixture(params=search.ENGINES)
def engine(request):
    if request.param == "compiled" and search._wordscan is None:
        pytest.skip(COMPILED_MISSING)
    return request.param


def compiled_available():
    return search._wordscan is not None


def test_the_compiled_engine_is_built_and_preferred_where_a_compiler_is():
    compiler = (sysconfig.get_config_var("CC") or "").split()
    if not compiler or shutil.which(compiler[0]) is None:
        pytest.skip("no C compiler here: leakhunt searches with numpy")
    assert compiled_available(), COMPILED_MISSING
    assert search.preferred_engine == "compiled"
    assert ValueSet([1], 8).engine == "compiled"


# Words as memory holds them: kernel pointers in a few 4 GiB regions, small integers, zeros, anything.
WORDS = st.one_of(st.builds(lambda high, low: high << 32 | low, st.sampled_from([0xFFFFA58A, 0xFFFFB500, 0xFFFFF803]),
                            st.integers(0, 2 ** 32 - 1)),
                  st.integers(0, 0xFFFF), st.just(0), st.integers(0, 2 ** 64 - 1))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([8, 4]), st.integers(0, 40), st.lists(WORDS, max_size=300), st.integers(1, 40), st.data())
def test_value_set_finds_exactly_the_aligned_occurrences(pointer_size, count, noise, block_words, data):
    mask = (1 << (8 * pointer_size)) - 1
    words = [w & mask for w in noise]
    values = data.draw(st.lists(st.sampled_from(words) if words else st.integers(0, mask), min_size=count,
                                max_size=count)) if count else []
    values += [0xFFFFA58A1C2D3040 & mask]
    buffer = np.array(words, dtype="<u8" if pointer_size == 8 else "<u4").tobytes()
    wanted = set(values)
    expected = [(i, w) for i, w in enumerate(words) if w in wanted]
    for engine in search.ENGINES:
        if engine == "compiled" and not compiled_available():
            continue
        value_set = ValueSet(values, pointer_size, engine)
        if engine == "numpy":
            value_set._block_words = block_words  # exercise the blocked path too
        indices, found, _, _ = value_set.find(buffer)
        assert list(zip(indices.tolist(), found.tolist())) == expected, engine


@pytest.mark.parametrize("regions", [1, 2, 3], ids=["one-region", "two-regions", "three-regions"])
@pytest.mark.parametrize("value_count", [1, 4, 5, 300, 20_000])
def test_value_set_agrees_with_a_plain_membership_test(engine, regions, value_count):
    rng = np.random.default_rng(regions * value_count)
    highs = np.array([0xFFFFA58A, 0xFFFFB500, 0xFFFF8000][:regions], dtype=np.uint64)
    pointers = (highs[rng.integers(0, regions, 200_000)] << np.uint64(32)) | (
        rng.integers(0, 2 ** 20, 200_000, dtype=np.uint64) << np.uint64(4))
    words = pointers.copy()
    words[rng.integers(0, len(words), 50_000)] = rng.integers(0, 0x10000, 50_000, dtype=np.uint64)
    values = np.unique(pointers[rng.integers(0, len(pointers), value_count)])
    values[0] = words[-1] = pointers[0]  # at least one value occurs
    value_set = ValueSet(values.tolist(), 8, engine)
    indices, found, _, _ = value_set.find(words.astype("<u8").tobytes())
    expected = np.flatnonzero(np.isin(words, values))
    assert len(expected) > 0
    assert indices.tolist() == expected.tolist() and found.tolist() == words[expected].tolist()


@pytest.mark.parametrize("pointer_size", [8, 4])
def test_x86_and_x64_words_agree_between_engines(pointer_size):
    if not compiled_available():
        pytest.skip(COMPILED_MISSING)
    dtype = "<u8" if pointer_size == 8 else "<u4"
    rng = np.random.default_rng(pointer_size)
    words = rng.integers(0, 1 << 12, 300_000).astype(dtype)  # small values: many repeats, many hits
    for count in (1, 2, 3, 4, 5, 64, 4096):
        values = np.unique(words[rng.integers(0, len(words), count)]).tolist()
        compiled = ValueSet(values, pointer_size, "compiled").find(words.tobytes())
        plain = ValueSet(values, pointer_size, "numpy").find(words.tobytes())
        assert len(compiled[0]) > 0
        assert compiled[0].tolist() == plain[0].tolist() and compiled[1].tolist() == plain[1].tolist()


def test_a_buffer_at_an_odd_address_is_searched_like_any_other(engine):
    words = np.arange(1000, dtype="<u8") * np.uint64(0x10) + np.uint64(0xFFFFA58A00000000)
    raw = b"\x00" + words.tobytes()
    view = memoryview(raw)[1:]  # the words start one byte into the bytes object
    indices, found, _, _ = ValueSet([int(words[7]), int(words[999])], 8, engine).find(view)
    assert indices.tolist() == [7, 999] and found.tolist() == [int(words[7]), int(words[999])]


def test_a_memory_mapped_file_is_searched_in_place(engine, tmp_path):
    words = np.zeros(1 << 16, dtype="<u8")
    words[[5, 40_000, 65_535]] = 0xFFFFA58A12345670
    path = tmp_path / "pages.bin"
    path.write_bytes(words.tobytes())
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with memoryview(mapped) as view:
            indices, found, _, _ = ValueSet([0xFFFFA58A12345670], 8, engine).find(view)
    assert indices.tolist() == [5, 40_000, 65_535] and set(found.tolist()) == {0xFFFFA58A12345670}


def test_an_empty_set_or_buffer_finds_nothing(engine):
    assert ValueSet([], 8, engine).find(b"\x01" * 64)[0].tolist() == []
    assert ValueSet([1, 2, 3], 8, engine).find(b"")[0].tolist() == []


def test_values_wider_than_a_pointer_are_truncated_to_it(engine):
    words = np.array([0x12345678, 0x9ABCDEF0], dtype="<u4").tobytes()
    assert ValueSet([0xFFFF_0000_1234_5678], 4, engine).find(words)[0].tolist() == [0]


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown search engine"):
        ValueSet([1], 8, "fortran")


def test_the_compiled_engine_checks_what_it_is_given():
    if not compiled_available():
        pytest.skip(COMPILED_MISSING)
    wordscan = search._wordscan
    values = np.array([1, 2, 3, 4, 5], dtype="<u8")
    filter_table = wordscan.filter_table(values, 8)
    with pytest.raises(ValueError, match="sorted and unique"):
        wordscan.filter_table(np.array([2, 1], dtype="<u8"), 8)
    with pytest.raises(ValueError, match="4 or 8"):
        wordscan.filter_table(values, 2)
    with pytest.raises(ValueError, match="multiple of 8"):
        wordscan.find(b"\x00" * 12, values, filter_table, 8)
    with pytest.raises(ValueError, match="filter does not belong"):
        wordscan.find(b"\x00" * 16, np.arange(1, 5000, dtype="<u8"), filter_table, 8)
    indices, words = wordscan.find(np.array([9, 3, 0, 5], dtype="<u8"), values, filter_table, 8)
    assert np.frombuffer(indices, dtype=np.int64).tolist() == [1, 3]
    assert np.frombuffer(words, dtype=np.uint64).tolist() == [3, 5]


# ---- object headers collected in the same pass ---------------------------------------------------

# An IRP's header as the hunt asks for it (Type 6, Size sizeof(IRP) + k stack locations), written out
# here from the reference's x64 numbers (sizeof(IRP) 0xD0, IO_STACK_LOCATION 0x48), not the product's.
IRP_X64 = ObjectHeaders(6, tuple(0xD0 + k * 0x48 for k in range(1, 128)))


def expected_headers(words, headers):
    """(index, next word) of every header at an even index with a word after it: the contract, by hand."""
    return [(i, words[i + 1]) for i in range(0, len(words) - 1, 2)
            if words[i] & 0xFFFF == headers.type and (words[i] >> 16) & 0xFFFF in headers.sizes]


HEADER_WORDS = st.one_of(WORDS, st.builds(lambda high, k: high << 32 | (0xD0 + k * 0x48) << 16 | 6,
                                          st.integers(0, 2 ** 32 - 1), st.integers(0, 130)),
                         st.builds(lambda size: size << 16 | 6, st.integers(0, 0xFFFF)))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([8, 4]), st.lists(HEADER_WORDS, max_size=300), st.integers(1, 40), st.data())
def test_both_engines_collect_exactly_the_object_headers(pointer_size, noise, block_words, data):
    mask = (1 << (8 * pointer_size)) - 1
    words = [w & mask for w in noise]
    values = data.draw(st.lists(st.sampled_from(words), max_size=6)) if words else []
    buffer = np.array(words, dtype="<u8" if pointer_size == 8 else "<u4").tobytes()
    wanted = set(values)
    for engine in search.ENGINES:
        if engine == "compiled" and not compiled_available():
            continue
        value_set = ValueSet(values, pointer_size, engine, headers=IRP_X64)
        if engine == "numpy":
            value_set._block_words = block_words
        found = value_set.find(buffer)
        assert list(zip(found.indices.tolist(), found.words.tolist())) == [
            (i, w) for i, w in enumerate(words) if w in wanted], engine
        assert list(zip(found.header_indices.tolist(), found.header_next.tolist())) == \
            expected_headers(words, IRP_X64), engine


@pytest.mark.parametrize("pointer_size", [8, 4])
def test_headers_are_found_in_large_buffers_by_both_engines_alike(pointer_size):
    if not compiled_available():
        pytest.skip(COMPILED_MISSING)
    dtype = "<u8" if pointer_size == 8 else "<u4"
    rng = np.random.default_rng(pointer_size + 100)
    words = rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint64).astype(dtype)
    spots = rng.integers(0, len(words) // 2, 3000) * 2
    words[spots] = (np.array(IRP_X64.sizes, dtype=np.uint64)[rng.integers(0, 127, 3000)] << np.uint64(16)) | 6
    words[spots[:500] + 1] = 6  # a header just after a header's word: only the even one counts
    words[-1] = words[spots[0]]  # the last word has no word after it
    compiled = ValueSet([int(words[7])], pointer_size, "compiled", headers=IRP_X64).find(words.tobytes())
    plain = ValueSet([int(words[7])], pointer_size, "numpy", headers=IRP_X64).find(words.tobytes())
    assert len(compiled.header_indices) >= 2900
    for field in range(4):
        assert compiled[field].tolist() == plain[field].tolist()
    assert compiled.header_indices.tolist() == [i for i, _ in expected_headers(words.tolist(), IRP_X64)]


def test_a_set_without_headers_reports_none():
    words = np.array([IRP_X64.sizes[0] << 16 | 6, 0xFFFFA58A00001000], dtype="<u8")
    for engine in search.ENGINES:
        if engine == "compiled" and not compiled_available():
            continue
        found = ValueSet([0xFFFFA58A00001000], 8, engine).find(words.tobytes())
        assert found.indices.tolist() == [1] and found.header_indices.tolist() == []


def test_the_compiled_engine_checks_the_header_arguments():
    if not compiled_available():
        pytest.skip(COMPILED_MISSING)
    wordscan = search._wordscan
    values = np.array([1], dtype="<u8")
    table = wordscan.filter_table(values, 8)
    with pytest.raises(ValueError, match="header_sizes 8192 bytes"):
        wordscan.find(bytes(16), values, table, 8, False, 6, bytes(100))
    with pytest.raises(ValueError, match="16-bit"):
        wordscan.find(bytes(16), values, table, 8, False, 0x10000, bytes(8192))
    with pytest.raises(ValueError, match="16 bits"):
        ValueSet([1], 8, headers=ObjectHeaders(0x10000, (0xD0,)))


# ---- the compiled engine reading a file itself ------------------------------------------------------

def file_reading_engine():
    if not search.compiled_reads_files:
        pytest.skip("the compiled engine's file reads (POSIX) are not built here")


@pytest.mark.parametrize("pointer_size", [8, 4])
@pytest.mark.parametrize("value_count", [1, 4, 5, 700])
def test_find_in_file_agrees_with_find_over_the_same_bytes(tmp_path, pointer_size, value_count):
    file_reading_engine()
    dtype = "<u8" if pointer_size == 8 else "<u4"
    rng = np.random.default_rng(value_count * pointer_size)
    words = rng.integers(0, 1 << 14, 600_000).astype(dtype)  # several read chunks, hits in each
    chunk_words = (256 * 1024) // pointer_size
    words[chunk_words - 1:chunk_words + 1] = words[5]  # hits on both sides of a chunk boundary
    path = tmp_path / "words.bin"
    path.write_bytes(words.tobytes())
    values = np.unique(np.concatenate([words[[5]], words[rng.integers(0, len(words), value_count - 1)]])).tolist()
    value_set = ValueSet(values, pointer_size, "compiled")
    assert value_set.reads_files
    offset = 3 * 4096 + pointer_size  # anywhere, as long as it is word aligned
    with open(path, "rb") as handle:
        (indices, found, _, _), done = value_set.find_in_file(handle.fileno(), offset, len(words) * pointer_size)
    in_memory = ValueSet(values, pointer_size, "numpy").find(words.tobytes()[offset:])
    assert done == len(words) * pointer_size - offset  # the file ends before offset + length
    assert len(indices) > 2 and chunk_words - 1 - offset // pointer_size in indices.tolist()
    assert indices.tolist() == in_memory[0].tolist() and found.tolist() == in_memory[1].tolist()
    assert found.dtype == np.dtype(dtype)


@pytest.mark.parametrize("pointer_size", [8, 4])
def test_find_in_file_collects_the_same_headers_as_find(tmp_path, pointer_size):
    file_reading_engine()
    dtype = "<u8" if pointer_size == 8 else "<u4"
    rng = np.random.default_rng(pointer_size + 7)
    words = rng.integers(0, 1 << 14, 400_000).astype(dtype)
    chunk_words = (256 * 1024) // pointer_size
    header = IRP_X64.sizes[3] << 16 | 6
    words[rng.integers(0, len(words) // 2, 200) * 2] = header
    words[chunk_words - 2] = words[chunk_words] = header  # on both sides of a read chunk's end
    path = tmp_path / "words.bin"
    path.write_bytes(words.tobytes())
    value_set = ValueSet([int(words[9])], pointer_size, "compiled", headers=IRP_X64)
    offset = 2 * 4096
    with open(path, "rb") as handle:
        from_file, done = value_set.find_in_file(handle.fileno(), offset, len(words) * pointer_size)
    in_memory = ValueSet([int(words[9])], pointer_size, "numpy", headers=IRP_X64).find(words.tobytes()[offset:])
    assert done == len(words) * pointer_size - offset
    assert chunk_words - 2 - offset // pointer_size in from_file.header_indices.tolist()
    for field in range(4):
        assert from_file[field].tolist() == in_memory[field].tolist()


def test_find_in_file_checks_what_it_is_given(tmp_path):
    file_reading_engine()
    path = tmp_path / "words.bin"
    path.write_bytes(bytes(64))
    value_set = ValueSet([1, 2], 8, "compiled")
    with open(path, "rb") as handle:
        assert value_set.find_in_file(handle.fileno(), 64, 4096)[1] == 0  # past the end: nothing read
        with pytest.raises(ValueError, match="aligned"):
            value_set.find_in_file(handle.fileno(), 3, 8)
        with pytest.raises(ValueError, match="positive"):
            value_set.find_in_file(handle.fileno(), 0, -8)
    directory = os.open(tmp_path, os.O_RDONLY)  # a descriptor that cannot be read from
    try:
        with pytest.raises(OSError):
            value_set.find_in_file(directory, 0, 8)
    finally:
        os.close(directory)


# ---- a mapped file cut short: a bus error stops the search with OSError, not the process --------------

PAGE = 4096
MARKER = 0xFFFFC58000001230


def mappings_searched():
    if not search.compiled_searches_mappings:
        pytest.skip("the compiled engine's bus-error guard (POSIX signals) is not built here")


def file_with_markers(path, pages: int) -> None:
    """``pages`` pages of zeros with MARKER in the first and the middle word of every page."""
    words = np.zeros(pages * PAGE // 8, dtype="<u8")
    words[0::PAGE // 8] = MARKER
    words[PAGE // 16::PAGE // 8] = MARKER
    path.write_bytes(words.tobytes())


@pytest.mark.parametrize("cut_at", [10 * PAGE, 10 * PAGE + PAGE // 2 + 8, 0], ids=["page", "mid-page", "empty"])
def test_a_mapped_file_cut_short_under_the_search_raises_oserror(tmp_path, cut_at):
    mappings_searched()
    path = tmp_path / "cut.bin"
    file_with_markers(path, 64)
    value_set = ValueSet([MARKER], 8, "compiled")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        with memoryview(mapping) as view:
            indices, found, _, _ = value_set.find_in_mapping(view)
            assert len(indices) == 128 and found.tolist() == [MARKER] * 128  # whole, it is searched in place
            os.truncate(path, cut_at)  # another program cuts it short: the pages past the cut raise SIGBUS
            with pytest.raises(OSError) as raised:
                value_set.find_in_mapping(view)
            assert raised.value.errno == errno.EIO
            with pytest.raises(OSError) as raised:  # a search that collects object headers too
                ValueSet([MARKER], 8, "compiled", headers=IRP_X64).find_in_mapping(view)
            assert raised.value.errno == errno.EIO
            whole_pages = cut_at // PAGE
            if whole_pages:  # what the file still holds is searched as before
                indices = value_set.find_in_mapping(view[:whole_pages * PAGE]).indices
                assert len(indices) == 2 * whole_pages


def test_bus_errors_on_several_threads_at_once_each_stop_their_own_search(tmp_path):
    mappings_searched()
    from concurrent.futures import ThreadPoolExecutor
    files, mappings = [], []
    for number in range(8):
        path = tmp_path / f"cut-{number}.bin"
        file_with_markers(path, 256)
        files.append(open(path, "rb"))
        mappings.append(mmap.mmap(files[-1].fileno(), 0, access=mmap.ACCESS_READ))
        if number % 2:
            os.truncate(path, number * 16 * PAGE)
    value_set = ValueSet([MARKER, MARKER + 0x10, MARKER + 0x20, MARKER + 0x30, MARKER + 0x40], 8, "compiled")

    def outcome(mapping):
        try:
            return len(value_set.find_in_mapping(mapping)[0])
        except OSError as error:
            return error.errno

    try:
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(outcome, mappings * 4))
    finally:
        for mapping, handle in zip(mappings, files):
            mapping.close()
            handle.close()
    assert outcomes == [512, errno.EIO] * 16


BUS_ERROR_ELSEWHERE = """
import faulthandler, mmap, os, signal, sys
sys.path.insert(0, {root!r})
from pykd_ext.search import ValueSet
if {faulthandler_on}:
    faulthandler.enable()
with open({path!r}, "rb") as handle:
    mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # two pages
    os.truncate({path!r}, 4096)
    try:  # a guarded search meets a bus error first: leakhunt's handler is installed and used
        ValueSet([5, 6, 7, 8, 9], 8, "compiled").find_in_mapping(mapping)
    except OSError:
        print("search stopped", flush=True)
    if {send}:
        os.kill(os.getpid(), signal.SIGBUS)  # sent by a process
    else:
        mapping[4096]  # a real bus error outside leakhunt's search: CPython reads the page past the end
print("survived", flush=True)
"""


@pytest.mark.parametrize("faulthandler_on,send", [(True, False), (False, False), (False, True)],
                         ids=["fault-to-faulthandler", "fault-to-default", "sent-signal"])
def test_a_bus_error_outside_the_search_still_reaches_the_handler_before_it(tmp_path, faulthandler_on, send):
    """The search's handler must not swallow other bus errors: faulthandler (or the default action) gets them."""
    mappings_searched()
    path = tmp_path / "two-pages.bin"
    path.write_bytes(bytes(2 * PAGE))
    script = BUS_ERROR_ELSEWHERE.format(root=ROOT, path=str(path), faulthandler_on=faulthandler_on, send=send)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.stdout.splitlines() == ["search stopped"], child.stderr
    assert child.returncode == -signal.SIGBUS, child.stderr
    if faulthandler_on:
        assert "Bus error" in child.stderr


def test_only_a_mapped_search_installs_the_bus_error_handler():
    """A process that never searches a mapping (inside WinDbg, a snapshot) keeps its signal handlers."""
    mappings_searched()
    if not os.path.exists("/proc/self/status"):
        pytest.skip("the kernel's list of caught signals (/proc/self/status SigCgt) is Linux's")
    script = (f"import mmap, signal, sys; sys.path.insert(0, {ROOT!r})\n"
              "from pykd_ext.search import ValueSet\n"
              "def bus_error_caught():\n"
              "    caught = [line.split()[1] for line in open('/proc/self/status') if line.startswith('SigCgt')][0]\n"
              "    return bool(int(caught, 16) >> (signal.SIGBUS - 1) & 1)\n"
              "values = ValueSet([5, 6, 7, 8, 9], 8, 'compiled')\n"
              "values.find(bytes(4096))\n"
              "print(bus_error_caught())\n"
              "values.find_in_mapping(mmap.mmap(-1, 4096))\n"
              "print(bus_error_caught())\n")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.stdout.split() == ["False", "True"], child.stderr
