/* Functions whose prologues and epilogues are the x64 unwind shapes under test, compiled by clang for
 * x86_64-pc-windows-msvc. The emulator test runs run_c_chain from the image's entry; every function
 * keeps values in non-volatile registers across its calls so that its unwind data has to restore them. */
typedef unsigned long long u64;

#define NOINLINE __attribute__((noinline))
/* Makes the compiler keep an array in memory (it may not see through the empty asm). */
#define KEEP(pointer) __asm__ volatile("" : : "r"(pointer) : "memory")

volatile u64 sink;
volatile double dsink;

NOINLINE static u64 mix(u64 value)  /* a leaf: no stack frame, so no RUNTIME_FUNCTION */
{
    return value * 0x9E3779B97F4A7C15ull + 1;
}

/* The innermost C function: calls the leaf. */
NOINLINE void c_innermost(u64 value)
{
    sink = mix(value);
    sink = mix(sink + value);
}

/* More than 512 KiB of locals: UWOP_ALLOC_LARGE with its unscaled 32-bit size, behind __chkstk. */
NOINLINE void c_huge_frame(u64 value)
{
    volatile u64 big[0x11000];
    KEEP(big);
    big[0] = value;
    big[0x10FFF] = value + 1;
    c_innermost(big[0] + big[0x10FFF]);
    sink = big[7];
}

/* Between 136 bytes and 512 KiB of locals: UWOP_ALLOC_LARGE with its size / 8 in one slot. */
NOINLINE void c_large_frame(u64 value)
{
    volatile u64 table[300];
    KEEP(table);
    for (int i = 0; i < 300; i += 37)
        table[i] = value + i;
    c_huge_frame(table[37]);
    sink = table[74];
}

/* XMM registers live across a call: UWOP_SAVE_XMM128 for xmm6 and up. */
NOINLINE double c_saves_xmm(double a, double b)
{
    double x = a * 1.5, y = b * 2.5, z = a + b, w = a - b;
    c_large_frame((u64)(a + b));
    dsink = x;
    return x * y + z * w + x / (y + 1.0);
}

/* alloca: a frame pointer, UWOP_SET_FPREG, and an epilogue that restores RSP from it. */
NOINLINE void c_frame_pointer(u64 count)
{
    volatile u64 *area = __builtin_alloca((count & 0xF0) + 64);
    area[0] = count;
    area[3] = count * 3;
    dsink = c_saves_xmm((double)count, 3.0);
    sink = area[0] + area[3];
}

/* Many values live across a call: UWOP_PUSH_NONVOL for the non-volatile registers. */
NOINLINE u64 c_pushes(u64 a, u64 b, u64 c, u64 d)
{
    u64 e = a * b, f = b * c, g = c * d, h = d * a, i = a ^ d, j = b ^ c, k = a + c;
    c_frame_pointer(a + d);
    return e + f * 3 + g * 5 + h * 7 + i * 11 + j * 13 + k * 17;
}

/* A tail call: the epilogue ends in a jmp to another function. */
NOINLINE u64 c_tail(u64 value)
{
    u64 kept = mix(value);
    sink = kept;
    c_innermost(kept);
    return c_pushes(kept, value, value + 2, kept + 3);
}

NOINLINE void run_c_chain(void)
{
    sink = c_tail(7) + 1;
}
