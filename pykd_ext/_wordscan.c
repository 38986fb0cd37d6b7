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
 * Object headers: in the same pass the search can also collect the I/O manager's object headers (an
 * IRP's, say: a CSHORT Type and a USHORT Size, the first 32 bits of the object). A word at an even
 * word index (objects from pool are aligned to two pointers) whose low 16 bits are header_type and
 * whose next 16 bits are a size set in header_sizes (a bitmap of 65536 bits) is a header; it is
 * reported with the word after it (an IRP's MdlAddress). A header at the buffer's last word has no
 * word after it and is not reported.
 *
 *   filter_table(values, word_size) -> bytes     the filter for find(), built once per value set
 *   find(buffer, values, filter, word_size, mapped=False, header_type=-1, header_sizes=b"")
 *        -> (bytes, bytes) or, with a header_type, (bytes, bytes, bytes, bytes)
 *        native int64 word indices of the members of values found in buffer, in order, and the
 *        native uint64 words found; with a header_type, then the indices of the headers and the
 *        words after them; mapped=True for a mapped file (see "Bus errors" above)
 *   find_in_file(fd, offset, length, values, filter, word_size, header_type=-1, header_sizes=b"")
 *        -> (bytes, bytes, int) or, with a header_type, (bytes, bytes, bytes, bytes, int)   (POSIX)
 *        the same for bytes [offset, offset + length) of an open file, read CHUNK_BYTES at a time:
 *        word indices from offset, and last the bytes read (fewer than length where the file ends sooner)
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
/* Words told in or out of the values' range per block before any is looked up in the filter. */
#define RANGE_BLOCK 32
/* Even words checked for an object header per block before looking at which one matched. */
#define HEADER_BLOCK 32
/* A header_sizes bitmap: one bit for each 16-bit Size. */
#define HEADER_SIZES_BYTES (65536 / 8)
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

/* The index of the lowest bit set in a nonzero mask. */
static inline int lowest_set_bit(uint32_t mask)
{
#if defined(__GNUC__)
    return __builtin_ctz(mask);
#else
    int index = 0;
    while (!(mask & 1)) {
        mask >>= 1;
        index++;
    }
    return index;
#endif
}

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
    VECTOR_CLONES static void filter_##SUFFIX(const WORD *words, Py_ssize_t count, const WORD *values, \
                                              Py_ssize_t value_count, const uint8_t *filter, int bits, \
                                              Hits *out)                                          \
    {                                                                                                \
        /* A word outside [lowest, highest] of the (sorted) values is no member: RANGE_BLOCK words   \
         * are told in or out of that range at once (a subtraction and a comparison each, which the  \
         * compiler vectorises), and only those inside it are looked up in the filter, whose random  \
         * reads cost most. Zeros, small numbers, code, user addresses and page table entries are    \
         * outside it; in a kernel dump, so are most pointers. The prefetch keeps the words of a     \
         * buffer that is not in the cache coming (the hardware prefetcher stops at page             \
         * boundaries). Prefetches past the end are harmless: they never fault. */                   \
        const WORD lowest = values[0], span = (WORD)(values[value_count - 1] - values[0]);           \
        Py_ssize_t i = 0;                                                                            \
        for (; i + RANGE_BLOCK <= count; i += RANGE_BLOCK) {                                         \
            for (int line = 0; line < RANGE_BLOCK * (int)sizeof(WORD); line += 64)                  \
                PREFETCH((uintptr_t)(words + i) + PREFETCH_BYTES + line);                            \
            uint32_t inside = 0;                                                                     \
            for (int k = 0; k < RANGE_BLOCK; k++)                                                    \
                inside |= (uint32_t)((WORD)(words[i + k] - lowest) <= span) << k;                    \
            while (inside) {                                                                         \
                int k = lowest_set_bit(inside);                                                      \
                inside &= inside - 1;                                                                \
                WORD word = words[i + k];                                                            \
                if (filter_slot_##SUFFIX(filter, bits, word)                                         \
                    && is_member_##SUFFIX(values, value_count, word))                                \
                    append(out, i + k, word);                                                        \
            }                                                                                        \
        }                                                                                            \
        for (; i < count; i++) {                                                                     \
            WORD word = words[i];                                                                    \
            if ((WORD)(word - lowest) <= span && filter_slot_##SUFFIX(filter, bits, word)            \
                && is_member_##SUFFIX(values, value_count, word))                                    \
                append(out, i, word);                                                                \
        }                                                                                            \
    }                                                                                                \
                                                                                                     \
    static inline int is_header_##SUFFIX(WORD word, uint16_t type, const uint8_t *sizes)             \
    {                                                                                                \
        unsigned size = (unsigned)(word >> 16) & 0xFFFF;                                             \
        return (uint16_t)word == type && (sizes[size >> 3] >> (size & 7) & 1);                       \
    }                                                                                                \
                                                                                                     \
    static void headers_##SUFFIX(const WORD *words, Py_ssize_t count, uint16_t type,                 \
                                 const uint8_t *sizes, Hits *out)                                    \
    {                                                                                                \
        /* Even indices only; the word after each header is always inside the block. */             \
        Py_ssize_t i = 0;                                                                            \
        for (; i + HEADER_BLOCK <= count; i += HEADER_BLOCK) {                                       \
            unsigned any = 0;                                                                        \
            for (int k = 0; k < HEADER_BLOCK; k += 2)                                                \
                any |= (uint16_t)words[i + k] == type;                                               \
            if (any) {                                                                               \
                for (int k = 0; k < HEADER_BLOCK; k += 2)                                            \
                    if (is_header_##SUFFIX(words[i + k], type, sizes))                               \
                        append(out, i + k, words[i + k + 1]);                                        \
            }                                                                                        \
        }                                                                                            \
        for (; i + 1 < count; i += 2)                                                                \
            if (is_header_##SUFFIX(words[i], type, sizes))                                           \
                append(out, i, words[i + 1]);                                                        \
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

/* What one search looks for: the values (with their filter) and, when header_type >= 0, object headers. */
typedef struct {
    const void *values;
    Py_ssize_t value_count;
    const uint8_t *filter;
    int bits;
    int word_size;
    int header_type;  /* -1: no headers */
    const uint8_t *header_sizes;
} Query;

/* Search ``count`` words for the values (called without the GIL). */
static void search_words(const void *words, Py_ssize_t count, const Query *query, Hits *out)
{
    if (query->value_count == 0 || count == 0)
        return;
    if (query->word_size == 8) {
        if (query->value_count <= FEW_VALUES)
            compare_64(words, count, query->values, query->value_count, out);
        else
            filter_64(words, count, query->values, query->value_count, query->filter, query->bits, out);
    } else {
        if (query->value_count <= FEW_VALUES)
            compare_32(words, count, query->values, query->value_count, out);
        else
            filter_32(words, count, query->values, query->value_count, query->filter, query->bits, out);
    }
}

/* Search ``count`` words whose first has index ``base`` for the values and, when asked, the object
 * headers (called without the GIL). With headers the words are taken CHUNK_BYTES at a time, values then
 * headers, so that the second look at a chunk reads the core's cache, not memory. */
static void search_region(const char *words, Py_ssize_t count, int64_t base, const Query *query, Hits *out,
                          Hits *headers)
{
    if (query->header_type < 0) {
        out->base = base;
        search_words(words, count, query, out);
        return;
    }
    Py_ssize_t step = CHUNK_BYTES / query->word_size;  /* even: header indices stay even */
    for (Py_ssize_t start = 0; start < count; start += step) {
        Py_ssize_t part = count - start < step ? count - start : step;
        const char *first = words + start * query->word_size;
        out->base = headers->base = base + start;
        search_words(first, part, query, out);
        if (query->word_size == 8)
            headers_64((const uint64_t *)first, part, (uint16_t)query->header_type, query->header_sizes, headers);
        else
            headers_32((const uint32_t *)first, part, (uint16_t)query->header_type, query->header_sizes, headers);
    }
}

/* Check the values, filter and header arguments of a search and fill ``query``; sets the error and
 * returns 0 if they are wrong. */
static int make_query(const Py_buffer *values, const Py_buffer *filter, int word_size, int header_type,
                      const Py_buffer *header_sizes, Query *query)
{
    if (!check_word_size(word_size) || !check_buffer(values, word_size, "values"))
        return 0;
    int bits = filter_bits_for(values->len / word_size);
    if (filter->len != (Py_ssize_t)1 << bits) {
        PyErr_SetString(PyExc_ValueError, "filter does not belong to these values (use filter_table)");
        return 0;
    }
    if (header_type > 0xFFFF || (header_type >= 0 && header_sizes->len != HEADER_SIZES_BYTES)) {
        PyErr_Format(PyExc_ValueError, "header_type must be a 16-bit value and header_sizes %d bytes (a bit per Size)",
                     HEADER_SIZES_BYTES);
        return 0;
    }
    query->values = values->buf;
    query->value_count = values->len / word_size;
    query->filter = filter->buf;
    query->bits = bits;
    query->word_size = word_size;
    query->header_type = header_type < 0 ? -1 : header_type;
    query->header_sizes = header_sizes->buf;
    return 1;
}

/* The result of a search as bytes objects: (indices, words) and, with headers, (..., header indices, next words). */
static PyObject *results_as_bytes(const Hits *out, const Hits *headers, const Query *query)
{
    PyObject *found = hits_as_bytes(out);
    if (found == NULL || query->header_type < 0)
        return found;
    PyObject *headers_found = hits_as_bytes(headers);
    PyObject *result = NULL;
    if (headers_found != NULL)
        result = PyTuple_Pack(4, PyTuple_GET_ITEM(found, 0), PyTuple_GET_ITEM(found, 1),
                              PyTuple_GET_ITEM(headers_found, 0), PyTuple_GET_ITEM(headers_found, 1));
    Py_DECREF(found);
    Py_XDECREF(headers_found);
    return result;
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

/* search_region() under the guard: 0 when a bus error stopped it. */
static int guarded_search_region(const char *words, Py_ssize_t count, const Query *query, Hits *out, Hits *headers)
{
    sigjmp_buf guard;
    int completed = 1;
    if (sigsetjmp(guard, 1) == 0) {
        scan_guard = &guard;
        search_region(words, count, 0, query, out, headers);
    } else {
        completed = 0;
    }
    scan_guard = NULL;
    return completed;
}
#endif

static PyObject *find(PyObject *module, PyObject *args)
{
    Py_buffer buffer, values, filter, header_sizes = {0};
    int word_size, mapped = 0, header_type = -1;
    if (!PyArg_ParseTuple(args, "y*y*y*i|piy*:find", &buffer, &values, &filter, &word_size, &mapped, &header_type,
                          &header_sizes))
        return NULL;
    PyObject *result = NULL;
    Hits out = {0}, headers = {0};
    out.keep_values = headers.keep_values = 1;
    Query query;
    int completed = 1;
    if (!make_query(&values, &filter, word_size, header_type, &header_sizes, &query)
        || !check_buffer(&buffer, word_size, "buffer"))
        goto done;
    Py_ssize_t count = buffer.len / word_size;
    if (mapped) {
#ifdef HAVE_BUS_GUARD
        if (!install_bus_guard()) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        completed = guarded_search_region(buffer.buf, count, &query, &out, &headers);
        Py_END_ALLOW_THREADS
#else
        PyErr_SetString(PyExc_ValueError, "this build cannot search a mapped file safely (GUARDS_BUS_ERRORS is 0)");
        goto done;
#endif
    } else {
        Py_BEGIN_ALLOW_THREADS
        search_region(buffer.buf, count, 0, &query, &out, &headers);
        Py_END_ALLOW_THREADS
    }
    if (!completed) {
        errno = EIO;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (out.out_of_memory || headers.out_of_memory) {
        PyErr_NoMemory();
        goto done;
    }
    result = results_as_bytes(&out, &headers, &query);
done:
    release_hits(&out);
    release_hits(&headers);
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&values);
    PyBuffer_Release(&filter);
    PyBuffer_Release(&header_sizes);
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
    int fd, word_size, header_type = -1;
    long long offset, length;
    Py_buffer values, filter, header_sizes = {0};
    if (!PyArg_ParseTuple(args, "iLLy*y*i|iy*:find_in_file", &fd, &offset, &length, &values, &filter, &word_size,
                          &header_type, &header_sizes))
        return NULL;
    PyObject *result = NULL;
    Hits out = {0}, headers = {0};
    out.keep_values = headers.keep_values = 1;
    Query query;
    char *chunk = NULL;
    if (!make_query(&values, &filter, word_size, header_type, &header_sizes, &query))
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
    while (done_bytes < length && !out.out_of_memory && !headers.out_of_memory) {
        Py_ssize_t wanted = length - done_bytes < CHUNK_BYTES ? (Py_ssize_t)(length - done_bytes) : CHUNK_BYTES;
        Py_ssize_t got = read_fully(fd, chunk, wanted, offset + done_bytes);
        if (got < 0) {
            read_error = errno;
            break;
        }
        search_region(chunk, got / word_size, done_bytes / word_size, &query, &out, &headers);
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
    if (out.out_of_memory || headers.out_of_memory) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *found = results_as_bytes(&out, &headers, &query);
    if (found != NULL) {
        Py_ssize_t size = PyTuple_GET_SIZE(found);
        result = PyTuple_New(size + 1);
        if (result != NULL) {
            for (Py_ssize_t i = 0; i < size; i++) {
                PyObject *item = PyTuple_GET_ITEM(found, i);
                Py_INCREF(item);
                PyTuple_SET_ITEM(result, i, item);
            }
            PyObject *read = PyLong_FromLongLong(done_bytes);
            if (read == NULL)
                Py_CLEAR(result);
            else
                PyTuple_SET_ITEM(result, size, read);
        }
    }
    Py_XDECREF(found);
done:
    free(chunk);
    release_hits(&out);
    release_hits(&headers);
    PyBuffer_Release(&values);
    PyBuffer_Release(&filter);
    PyBuffer_Release(&header_sizes);
    return result;
}
#endif


static PyMethodDef wordscan_methods[] = {
    {"filter_table", filter_table, METH_VARARGS,
     "filter_table(values, word_size) -> bytes: the filter find() needs for these sorted, unique values."},
    {"find", find, METH_VARARGS,
     "find(buffer, values, filter, word_size, mapped=False, header_type=-1, header_sizes=b'') -> (indices, words):\n"
     "native int64 indices of the aligned words of buffer that are in values, in order, and the native uint64\n"
     "words found; with a header_type also (header indices, next words) of the object headers. Runs without\n"
     "the GIL. mapped=True (where GUARDS_BUS_ERRORS) for a mapped file: a bus error (the file cut short, or\n"
     "unreadable) raises OSError (EIO)."},
#ifdef HAVE_PREAD
    {"find_in_file", find_in_file, METH_VARARGS,
     "find_in_file(fd, offset, length, values, filter, word_size, header_type=-1, header_sizes=b'') ->\n"
     "(indices, words[, header indices, next words], bytes_read): find()\n"
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
