/*
 * pykd_ext._wordscan: the compiled core of pykd_ext.search.ValueSet.
 *
 * Finds every aligned 4- or 8-byte little-endian word of a buffer, or of a byte range of a file,
 * that belongs to a sorted set of values, in one pass, without holding the GIL (so several windows
 * of a dump can be searched at once). Up to FEW_VALUES values are compared directly; larger sets go
 * through a filter table of one byte per slot indexed by a multiplicative hash of the whole word,
 * and only the words that pass it are looked up in the sorted values. The build is optional:
 * without a compiler, ValueSet uses numpy instead.
 *
 * Bus errors: a mapped file's pages are searched where the page cache holds them, without the copy a
 * read makes. But touching a page the file no longer has (cut short by another program) or cannot
 * read (an I/O error) raises SIGBUS instead of returning an error. Where the OS has POSIX signals
 * (GUARDS_BUS_ERRORS is 1), find(..., mapped=True) runs under a guard: a bus error during its search
 * stops the search and raises OSError (EIO) instead of killing the process. Any other bus error goes on
 * to the handler that was there before. The guard's handler is installed at the first mapped search,
 * not before: a process that never searches a mapping keeps its signal handlers as they were.
 *
 *   filter_table(values, word_size) -> bytes     the filter for find(), built once per value set
 *   find(buffer, values, filter, word_size, mapped=False) -> (bytes, bytes)
 *        native int64 word indices of the members of values found in buffer, in order, and the
 *        native uint64 words found; mapped=True for a mapped file (see "Bus errors" above)
 *   find_in_file(fd, offset, length, values, filter, word_size) -> (bytes, bytes, int)   (POSIX)
 *        the same for bytes [offset, offset + length) of an open file, read CHUNK_BYTES at a time:
 *        native int64 word indices from offset, the native uint64 words found, and the bytes read
 *        (fewer than length where the file ends sooner)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#ifndef _WIN32
#include <unistd.h>
#define HAVE_PREAD 1
#include <setjmp.h>
#include <signal.h>
#if defined(SA_SIGINFO)
#define HAVE_BUS_GUARD 1
#endif
#endif

#define FEW_VALUES 4
/* Filter table sizes: 2^bits one-byte slots, about 256 per value (a word outside the set passes with
 * probability n / 2^bits), between 4 KiB and 1 MiB. A byte per slot needs no bit extraction, which
 * made the lookup 40% faster than a bit per slot; 256 KiB for 1000 values stays in the L2 cache
 * beside the read buffer. */
#define MIN_FILTER_BITS 12
#define MAX_FILTER_BITS 20
#define SLOTS_PER_VALUE_LOG2 8
/* Words compared per block before looking at which one matched (lets the compiler vectorise). */
#define COMPARE_BLOCK 32
/* Words looked up in the filter per block before looking at which one passed. */
#define FILTER_BLOCK 8
/* How far ahead of the filter loop the words are prefetched (one page). */
#define PREFETCH_BYTES 4096
/* find_in_file reads this much at a time into a buffer that stays in the core's L2 cache, so that
 * the search reads the words from the cache the read has just written them to. */
#define CHUNK_BYTES (256 * 1024)

#define HASH64 UINT64_C(0x9E3779B97F4A7C15)
#define HASH32 UINT32_C(0x9E3779B9)

/* Function multiversioning: an AVX2 copy of the compare loop, chosen at load time (GCC/clang on
 * x86-64 Linux with glibc); elsewhere the portable code alone. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* A hint to start loading the cache line at an address that may lie past the buffer. */
#if defined(__GNUC__)
#define PREFETCH(address) __builtin_prefetch((const void *)(address))
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define PREFETCH(address) _mm_prefetch((const char *)(address), _MM_HINT_T0)
#else
#define PREFETCH(address) ((void)0)
#endif

/* append() is kept out of line: whatever it stored is in memory when it returns, so a search that a
 * bus error jumps out of leaves consistent hits behind to free. Hits are rare: it costs nothing. */
#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define NOINLINE __declspec(noinline)
#else
#define NOINLINE
#endif

/* The hits of a search: word indices (from ``base``) and, when ``values`` is wanted, the words. */
typedef struct {
    int64_t *indices;
    uint64_t *values;
    Py_ssize_t count, capacity;
    int64_t base;
    int keep_values;
    int out_of_memory;
} Hits;

NOINLINE static void append(Hits *hits, Py_ssize_t index, uint64_t word)
{
    if (hits->count == hits->capacity) {
        Py_ssize_t capacity = hits->capacity ? hits->capacity * 2 : 256;
        int64_t *indices = realloc(hits->indices, (size_t)capacity * sizeof(int64_t));
        if (indices == NULL) {
            hits->out_of_memory = 1;
            return;
        }
        hits->indices = indices;
        if (hits->keep_values) {
            uint64_t *values = realloc(hits->values, (size_t)capacity * sizeof(uint64_t));
            if (values == NULL) {
                hits->out_of_memory = 1;
                return;
            }
            hits->values = values;
        }
        hits->capacity = capacity;
    }
    hits->indices[hits->count] = hits->base + index;
    if (hits->keep_values)
        hits->values[hits->count] = word;
    hits->count++;
}

/* (indices, words) as two bytes objects of native int64 and uint64. */
static PyObject *hits_as_bytes(const Hits *hits)
{
    Py_ssize_t size = hits->count * (Py_ssize_t)sizeof(int64_t);
    /* With no hits nothing was allocated: "y#" makes None of a NULL pointer, so point at "". */
    return Py_BuildValue("(y#y#)", hits->count ? (const char *)hits->indices : "", size,
                         hits->count ? (const char *)hits->values : "", size);
}

static void release_hits(Hits *hits)
{
    free(hits->indices);
    free(hits->values);
}

static int filter_bits_for(Py_ssize_t count)
{
    int bits = MIN_FILTER_BITS;
    while (bits < MAX_FILTER_BITS && ((Py_ssize_t)1 << (bits - SLOTS_PER_VALUE_LOG2)) < count)
        bits++;
    return bits;
}

/* The same code for both word sizes: WORD is uint64_t or uint32_t. */
#define DEFINE_SCAN(SUFFIX, WORD, HASH, WIDTH)                                                        \
    static inline uint64_t hash_##SUFFIX(WORD word, int bits)                                       \
    {                                                                                                \
        return (uint64_t)((WORD)(word * HASH) >> (WIDTH - bits));                                    \
    }                                                                                                \
                                                                                                     \
    static int is_member_##SUFFIX(const WORD *values, Py_ssize_t count, WORD word)                   \
    {                                                                                                \
        Py_ssize_t low = 0, high = count;                                                            \
        while (low < high) {                                                                         \
            Py_ssize_t middle = low + (high - low) / 2;                                              \
            if (values[middle] < word)                                                               \
                low = middle + 1;                                                                    \
            else                                                                                     \
                high = middle;                                                                       \
        }                                                                                            \
        return low < count && values[low] == word;                                                   \
    }                                                                                                \
                                                                                                     \
    VECTOR_CLONES static void compare_##SUFFIX(const WORD *words, Py_ssize_t count,                 \
                                               const WORD *values, Py_ssize_t value_count, \
                                               Hits *out)                                         \
    {                                                                                                \
        /* Up to FEW_VALUES values, padded by repeating the first. */                                \
        WORD a = values[0], b = values[value_count > 1 ? 1 : 0];                                     \
        WORD c = values[value_count > 2 ? 2 : 0], d = values[value_count > 3 ? 3 : 0];               \
        Py_ssize_t i = 0;                                                                            \
        for (; i + COMPARE_BLOCK <= count; i += COMPARE_BLOCK) {                                     \
            WORD any = 0;                                                                            \
            for (int k = 0; k < COMPARE_BLOCK; k++)                                                  \
                any |= (WORD)(words[i + k] == a) | (WORD)(words[i + k] == b)                         \
                       | (WORD)(words[i + k] == c) | (WORD)(words[i + k] == d);                      \
            if (any) {                                                                               \
                for (int k = 0; k < COMPARE_BLOCK; k++) {                                            \
                    WORD word = words[i + k];                                                        \
                    if ((word == a) | (word == b) | (word == c) | (word == d))                       \
                        append(out, i + k, word);                                                    \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (; i < count; i++) {                                                                     \
            WORD word = words[i];                                                                    \
            if ((word == a) | (word == b) | (word == c) | (word == d))                               \
                append(out, i, word);                                                                \
        }                                                                                            \
    }                                                                                                \
                                                                                                     \
    static inline unsigned filter_slot_##SUFFIX(const uint8_t *filter, int bits, WORD word)         \
    {                                                                                                \
        return filter[hash_##SUFFIX(word, bits)];                                                    \
    }                                                                                                \
                                                                                                     \
    static void filter_##SUFFIX(const WORD *words, Py_ssize_t count, const WORD *values,             \
                                Py_ssize_t value_count, const uint8_t *filter, int bits,             \
                                Hits *out)                                                        \
    {                                                                                                \
        /* FILTER_BLOCK independent lookups per branch keep the core busy; the prefetch keeps the    \
         * words of a buffer that is not in the cache coming (the hardware prefetcher stops at page  \
         * boundaries). Prefetches past the end are harmless: they never fault. */                    \
        Py_ssize_t i = 0;                                                                            \
        for (; i + FILTER_BLOCK <= count; i += FILTER_BLOCK) {                                       \
            PREFETCH((uintptr_t)(words + i) + PREFETCH_BYTES);                                       \
            unsigned any = 0;                                                                        \
            for (int k = 0; k < FILTER_BLOCK; k++)                                                   \
                any |= filter_slot_##SUFFIX(filter, bits, words[i + k]);                             \
            if (any) {                                                                               \
                for (int k = 0; k < FILTER_BLOCK; k++) {                                             \
                    WORD word = words[i + k];                                                        \
                    if (filter_slot_##SUFFIX(filter, bits, word)                                     \
                        && is_member_##SUFFIX(values, value_count, word))                            \
                        append(out, i + k, word);                                                    \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (; i < count; i++) {                                                                     \
            WORD word = words[i];                                                                    \
            if (filter_slot_##SUFFIX(filter, bits, word) && is_member_##SUFFIX(values, value_count, word)) \
                append(out, i, word);                                                                \
        }                                                                                            \
    }                                                                                                \
                                                                                                     \
    static void fill_filter_##SUFFIX(const WORD *values, Py_ssize_t count, uint8_t *filter, int bits) \
    {                                                                                                \
        for (Py_ssize_t j = 0; j < count; j++)                                                       \
            filter[hash_##SUFFIX(values[j], bits)] = 1;                                              \
    }                                                                                                \
                                                                                                     \
    static int sorted_unique_##SUFFIX(const WORD *values, Py_ssize_t count)                          \
    {                                                                                                \
        for (Py_ssize_t j = 1; j < count; j++)                                                       \
            if (values[j - 1] >= values[j])                                                          \
                return 0;                                                                            \
        return 1;                                                                                    \
    }

DEFINE_SCAN(64, uint64_t, HASH64, 64)
DEFINE_SCAN(32, uint32_t, HASH32, 32)

static int check_word_size(int word_size)
{
    if (word_size != 4 && word_size != 8) {
        PyErr_Format(PyExc_ValueError, "word size must be 4 or 8, not %d", word_size);
        return 0;
    }
    return 1;
}

/* Words are read at their natural alignment (numpy arrays, bytes and page-aligned mappings are). */
static int check_buffer(const Py_buffer *buffer, int word_size, const char *what)
{
    if (buffer->len % word_size != 0) {
        PyErr_Format(PyExc_ValueError, "%s: length %zd is not a multiple of %d", what, buffer->len, word_size);
        return 0;
    }
    if ((uintptr_t)buffer->buf % (uintptr_t)word_size != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to %d bytes", what, word_size);
        return 0;
    }
    return 1;
}

static PyObject *filter_table(PyObject *module, PyObject *args)
{
    Py_buffer values;
    int word_size;
    if (!PyArg_ParseTuple(args, "y*i:filter_table", &values, &word_size))
        return NULL;
    PyObject *result = NULL;
    if (!check_word_size(word_size) || !check_buffer(&values, word_size, "values"))
        goto done;
    Py_ssize_t count = values.len / word_size;
    int sorted = word_size == 8 ? sorted_unique_64(values.buf, count) : sorted_unique_32(values.buf, count);
    if (!sorted) {
        PyErr_SetString(PyExc_ValueError, "values must be sorted and unique");
        goto done;
    }
    int bits = filter_bits_for(count);
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)1 << bits);
    if (result == NULL)
        goto done;
    uint8_t *filter = (uint8_t *)PyBytes_AS_STRING(result);
    memset(filter, 0, (size_t)PyBytes_GET_SIZE(result));
    if (word_size == 8)
        fill_filter_64(values.buf, count, filter, bits);
    else
        fill_filter_32(values.buf, count, filter, bits);
done:
    PyBuffer_Release(&values);
    return result;
}

/* Search ``count`` words for the values (called without the GIL). */
static void search_words(const void *words, Py_ssize_t count, const Py_buffer *values, const Py_buffer *filter,
                         int word_size, Hits *out)
{
    Py_ssize_t value_count = values->len / word_size;
    int bits = filter_bits_for(value_count);
    if (value_count == 0 || count == 0)
        return;
    if (word_size == 8) {
        if (value_count <= FEW_VALUES)
            compare_64(words, count, values->buf, value_count, out);
        else
            filter_64(words, count, values->buf, value_count, filter->buf, bits, out);
    } else {
        if (value_count <= FEW_VALUES)
            compare_32(words, count, values->buf, value_count, out);
        else
            filter_32(words, count, values->buf, value_count, filter->buf, bits, out);
    }
}

/* The checks both searches make of their values and filter; sets the error and returns 0 if wrong. */
static int check_values(const Py_buffer *values, const Py_buffer *filter, int word_size)
{
    if (!check_word_size(word_size) || !check_buffer(values, word_size, "values"))
        return 0;
    int bits = filter_bits_for(values->len / word_size);
    if (filter->len != (Py_ssize_t)1 << bits) {
        PyErr_SetString(PyExc_ValueError, "filter does not belong to these values (use filter_table)");
        return 0;
    }
    return 1;
}

#ifdef HAVE_BUS_GUARD
/* While set on a thread, a bus error on that thread jumps back to it (see "Bus errors" above). */
static _Thread_local sigjmp_buf *scan_guard;
static struct sigaction previous_bus_action;

/* Whether a signal was sent by a process (kill, sigqueue, tgkill) rather than raised by a fault. */
static int sent_by_a_process(const siginfo_t *info)
{
    if (info == NULL || info->si_code == SI_USER || info->si_code == SI_QUEUE)
        return 1;
    return info->si_code <= 0;  /* Linux gives every code of a sent signal a value <= 0 (SI_TKILL...) */
}

static void on_bus_error(int signal_number, siginfo_t *info, void *context)
{
    (void)context;
    sigjmp_buf *guard = scan_guard;
    if (guard != NULL && !sent_by_a_process(info))  /* a fault of the guarded search */
        siglongjmp(*guard, 1);
    sigaction(SIGBUS, &previous_bus_action, NULL);
    if (sent_by_a_process(info))
        raise(signal_number);  /* deliver it again, to the previous handler */
    /* A fault: returning runs the access again, and it faults again under the previous handler. */
}

/* Make on_bus_error the SIGBUS handler; 0 where it cannot be. Called with the GIL held (so never by two
 * threads at once) before every search, so that a handler set since (Python's faulthandler, say) is
 * chained behind it rather than left to take the search's bus errors. */
static int install_bus_guard(void)
{
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) != 0)
        return 0;
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_bus_error)
        return 1;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_bus_error;
    ours.sa_flags = SA_SIGINFO;
    sigemptyset(&ours.sa_mask);
    return sigaction(SIGBUS, &ours, &previous_bus_action) == 0;
}

/* search_words() under the guard: 0 when a bus error stopped it. */
static int guarded_search_words(const void *words, Py_ssize_t count, const Py_buffer *values,
                                const Py_buffer *filter, int word_size, Hits *out)
{
    sigjmp_buf guard;
    int completed = 1;
    if (sigsetjmp(guard, 1) == 0) {
        scan_guard = &guard;
        search_words(words, count, values, filter, word_size, out);
    } else {
        completed = 0;
    }
    scan_guard = NULL;
    return completed;
}
#endif

static PyObject *find(PyObject *module, PyObject *args)
{
    Py_buffer buffer, values, filter;
    int word_size, mapped = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*i|p:find", &buffer, &values, &filter, &word_size, &mapped))
        return NULL;
    PyObject *result = NULL;
    Hits out = {0};
    out.keep_values = 1;
    int completed = 1;
    if (!check_values(&values, &filter, word_size) || !check_buffer(&buffer, word_size, "buffer"))
        goto done;
    if (mapped) {
#ifdef HAVE_BUS_GUARD
        if (!install_bus_guard()) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        completed = guarded_search_words(buffer.buf, buffer.len / word_size, &values, &filter, word_size, &out);
        Py_END_ALLOW_THREADS
#else
        PyErr_SetString(PyExc_ValueError, "this build cannot search a mapped file safely (GUARDS_BUS_ERRORS is 0)");
        goto done;
#endif
    } else {
        Py_BEGIN_ALLOW_THREADS
        search_words(buffer.buf, buffer.len / word_size, &values, &filter, word_size, &out);
        Py_END_ALLOW_THREADS
    }
    if (!completed) {
        errno = EIO;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (out.out_of_memory) {
        PyErr_NoMemory();
        goto done;
    }
    result = hits_as_bytes(&out);
done:
    release_hits(&out);
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&values);
    PyBuffer_Release(&filter);
    return result;
}

#ifdef HAVE_PREAD
/* Fill ``buffer`` with up to ``size`` bytes of the file from ``offset``; the bytes read (fewer at the
 * end of the file), or -1 with errno set. */
static Py_ssize_t read_fully(int fd, char *buffer, Py_ssize_t size, long long offset)
{
    Py_ssize_t done = 0;
    while (done < size) {
        ssize_t count = pread(fd, buffer + done, (size_t)(size - done), (off_t)(offset + done));
        if (count < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (count == 0)
            break;
        done += count;
    }
    return done;
}

static PyObject *find_in_file(PyObject *module, PyObject *args)
{
    int fd, word_size;
    long long offset, length;
    Py_buffer values, filter;
    if (!PyArg_ParseTuple(args, "iLLy*y*i:find_in_file", &fd, &offset, &length, &values, &filter, &word_size))
        return NULL;
    PyObject *result = NULL;
    Hits out = {0};
    out.keep_values = 1;
    char *chunk = NULL;
    if (!check_values(&values, &filter, word_size))
        goto done;
    if (offset < 0 || length < 0 || offset % word_size != 0) {
        PyErr_Format(PyExc_ValueError, "offset %lld and length %lld must be positive and the offset aligned to %d",
                     offset, length, word_size);
        goto done;
    }
    chunk = malloc(CHUNK_BYTES);
    if (chunk == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    long long done_bytes = 0;
    int read_error = 0;
    Py_BEGIN_ALLOW_THREADS
    while (done_bytes < length && !out.out_of_memory) {
        Py_ssize_t wanted = length - done_bytes < CHUNK_BYTES ? (Py_ssize_t)(length - done_bytes) : CHUNK_BYTES;
        Py_ssize_t got = read_fully(fd, chunk, wanted, offset + done_bytes);
        if (got < 0) {
            read_error = errno;
            break;
        }
        out.base = done_bytes / word_size;
        search_words(chunk, got / word_size, &values, &filter, word_size, &out);
        done_bytes += got;
        if (got < wanted)
            break;  /* the end of the file */
    }
    Py_END_ALLOW_THREADS
    if (read_error) {
        errno = read_error;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (out.out_of_memory) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *hits = hits_as_bytes(&out);
    if (hits != NULL)
        result = Py_BuildValue("(OOL)", PyTuple_GET_ITEM(hits, 0), PyTuple_GET_ITEM(hits, 1), done_bytes);
    Py_XDECREF(hits);
done:
    free(chunk);
    release_hits(&out);
    PyBuffer_Release(&values);
    PyBuffer_Release(&filter);
    return result;
}
#endif

static PyMethodDef wordscan_methods[] = {
    {"filter_table", filter_table, METH_VARARGS,
     "filter_table(values, word_size) -> bytes: the filter find() needs for these sorted, unique values."},
    {"find", find, METH_VARARGS,
     "find(buffer, values, filter, word_size, mapped=False) -> (indices, words): native int64 indices of\n"
     "the aligned words of buffer that are in values, in order, and the native uint64 words found. Runs\n"
     "without the GIL. mapped=True (where GUARDS_BUS_ERRORS) for a mapped file: a bus error (the file cut\n"
     "short, or unreadable) raises OSError (EIO)."},
#ifdef HAVE_PREAD
    {"find_in_file", find_in_file, METH_VARARGS,
     "find_in_file(fd, offset, length, values, filter, word_size) -> (indices, words, bytes_read): find()\n"
     "over bytes [offset, offset + length) of an open file, read without the GIL a cache-sized chunk at a\n"
     "time; native int64 word indices from offset and the native uint64 words found, in order."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wordscan_module = {
    PyModuleDef_HEAD_INIT, "_wordscan", "Compiled word search for pykd_ext.search.ValueSet.", -1,
    wordscan_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wordscan(void)
{
#if PY_BIG_ENDIAN
    /* Dump words are little-endian and the values are sorted as such: numpy handles other hosts. */
    PyErr_SetString(PyExc_ImportError, "_wordscan supports little-endian hosts only");
    return NULL;
#else
    PyObject *module = PyModule_Create(&wordscan_module);
#ifdef HAVE_BUS_GUARD
    int guards_bus_errors = 1;
#else
    int guards_bus_errors = 0;
#endif
    if (module != NULL && PyModule_AddIntConstant(module, "GUARDS_BUS_ERRORS", guards_bus_errors) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
#endif
}
